// File: hyper-parameters of the LTX-2.0 video transformer (video-only path) and of the way SANA-WM
// drives it as its Stage-2 refiner.
//
// Depends on the C++ standard library only (shares wmserve_sana's JSON reader and error types).
//
// TransformerConfig is read from the diffusers `LTX2VideoTransformer3DModel` config JSON: the
// `transformer/config.json` of a diffusers checkpoint, and the `config` entry of the golden files'
// safetensors metadata (../shared/golden/ltx2-refiner-tiny/README.md §2.1). Spec: ltx2-spec.md §2.1.
//
// Keys:
//   * video keys (parsed, see the fields below); absent keys keep the value of `defaults` (by
//     default the LTX-2.0 release values);
//   * `audio_*` keys and `cross_attn_timestep_scale_multiplier` describe the audio stream and the
//     LTX-2.3 cross-attention modulation, which the video-only path never runs: accepted, not
//     checked, recorded in `ignored_keys`;
//   * keys starting with '_' (_class_name, _diffusers_version, ...) are skipped;
//   * "wmserve_preset" (a name; "custom" when absent) is the one wmserve extension;
//   * any other key is a ConfigError unless `allow_unknown_keys` (then it goes to ignored_keys).
//
// Validate() rejects, with one message per violation in a single ConfigError, every value the
// port does not implement (patch size != 1, interleaved RoPE, gated attention, cross-attention
// modulation, ...) rather than silently computing something else.
//
// Constants of the released code that are not config entries (timestep sinusoid width, FFN
// multiplier, text-mask bias, final LayerNorm eps) are fields with fixed defaults; not read from
// JSON.
//
// RefinerOptions carries SANA-WM's refiner driving parameters (spec §3, sana-wm-spec.md §5).
#ifndef WMSERVE_WORKER_MODELS_LTX2_REFINER_CONFIG_H_
#define WMSERVE_WORKER_MODELS_LTX2_REFINER_CONFIG_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace wmserve::worker::ltx2 {

struct TransformerConfig {
  std::string name = "ltx2";

  // --- architecture (diffusers keys; defaults = LTX-2.0, spec §2.1) ---
  int in_channels = 128;
  int out_channels = 128;
  int patch_size = 1;
  int patch_size_t = 1;
  int num_attention_heads = 32;
  int attention_head_dim = 128;
  int cross_attention_dim = 4096;  // must equal the inner dim (text is projected to D first)
  int num_layers = 48;
  int caption_channels = 3840;     // connector output width
  std::string activation_fn = "gelu-approximate";
  std::string qk_norm = "rms_norm_across_heads";
  bool norm_elementwise_affine = false;  // block norms carry no weight
  double norm_eps = 1e-6;                // block RMSNorms and the q/k RMSNorms
  bool attention_bias = true;
  bool attention_out_bias = true;
  double rope_theta = 10000.0;
  bool rope_double_precision = true;     // frequency grid in float64, then cast to float32
  std::string rope_type = "split";
  int pos_embed_max_pos = 20;            // seconds
  int base_height = 2048;                // pixels
  int base_width = 2048;
  std::array<int, 3> vae_scale_factors = {8, 32, 32};  // (t, h, w)
  int causal_offset = 1;
  double timestep_scale_multiplier = 1000.0;  // model timestep = sigma * this
  bool gated_attn = false;
  bool cross_attn_mod = false;
  bool use_prompt_embeddings = true;     // caption_projection exists
  bool perturbed_attn = false;

  // --- constants of the released code (not read from JSON) ---
  int timestep_embed_dim = 256;          // sinusoid width, [cos, sin] order (spec §2.3)
  double timestep_max_period = 10000.0;
  int ffn_mult = 4;                      // diffusers FeedForward default
  double layer_norm_eps = 1e-6;          // final LayerNorm, no affine (spec §2.6)
  double text_mask_bias = -10000.0;      // (1 - mask) * this, added to cross-attention logits

  // Keys accepted without being used (audio_*, ...) or skipped via allow_unknown_keys.
  std::vector<std::string> ignored_keys;

  // --- construction ---
  // Parses the diffusers JSON (see the file comment). Throws ConfigError (JSON syntax errors are
  // wrapped). Does not call Validate().
  static TransformerConfig FromJson(std::string_view json, const TransformerConfig& defaults,
                                    bool allow_unknown_keys = false);
  static TransformerConfig FromJson(std::string_view json) {
    return FromJson(json, TransformerConfig());
  }
  // "tiny" (the golden ltx2-refiner-tiny config) or "ltx2" (LTX-2.0), compiled in; validated.
  static TransformerConfig Preset(std::string_view name);
  // Reads `path` (defaults: LTX-2.0) and validates it; errors name the path.
  static TransformerConfig FromFile(const std::string& path);

  // The video keys plus "wmserve_preset" as diffusers JSON (round-trips through FromJson).
  std::string ToJson() const;

  // Throws ConfigError listing every violated constraint.
  void Validate() const;

  // --- derived values ---
  int64_t inner_dim() const { return int64_t{num_attention_heads} * attention_head_dim; }  // D
  int64_t ffn_dim() const { return inner_dim() * ffn_mult; }
  int64_t modulation_dim() const { return 6 * inner_dim(); }  // adaLN-single output (spec §2.3)
  // Split RoPE (spec §2.4): K = floor(D / 6) frequencies per axis, 3K angles, D/2 - 3K identity
  // slots in front, D/2 slots cut into heads x (head_dim / 2).
  int64_t rope_freqs_per_axis() const { return inner_dim() / 6; }
  int64_t rope_slots() const { return inner_dim() / 2; }
  int64_t rope_pad_slots() const { return rope_slots() - 3 * rope_freqs_per_axis(); }
  int64_t rope_slots_per_head() const { return attention_head_dim / 2; }
};

// The compiled-in preset JSON; throws ConfigError for other names.
std::string_view TransformerPresetJson(std::string_view name);
std::vector<std::string> TransformerPresetNames();

// SANA-WM's refiner schedule and streaming geometry (spec §3.1-3.3; S-REF `refine_latents`,
// `RefinerChunkRunner`).
struct RefinerOptions {
  // STAGE_2_DISTILLED_SIGMA_VALUES, held as float32 like the reference's sigma tensor (golden
  // README §5.5): 0.909375011920929, 0.7250000238418579, 0.421875, 0.
  std::vector<float> sigmas = {0.909375f, 0.725f, 0.421875f, 0.0f};
  int block_size = 3;       // latent frames per streaming block
  int sink_size = 1;        // leading clean frames used as the attention sink (never refined)
  int kv_max_frames = 11;   // sink + history frames kept for the next blocks
  double fps = 16.0;        // drives the RoPE time axis
  uint64_t seed = 42;       // noise generator seed

  int steps() const { return static_cast<int>(sigmas.size()) - 1; }
  // kv_max_frames - sink_size: the history cap (10 frames canonically).
  int history_cap_frames() const { return kv_max_frames - sink_size; }

  // Throws ConfigError listing every violation: at least one step, sigmas finite, strictly
  // decreasing, in (0, 1] except the last which is 0; block_size >= 1; sink_size >= 1;
  // kv_max_frames >= sink_size; fps > 0.
  void Validate() const;
};

}  // namespace wmserve::worker::ltx2

#endif  // WMSERVE_WORKER_MODELS_LTX2_REFINER_CONFIG_H_
