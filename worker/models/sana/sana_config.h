// File: hyper-parameters of the SANA-WM Stage-1 DiT (spec §1.1, §9; golden README §2).
//
// Depends on the C++ standard library only.
//
// A SanaConfig is read from the diffusers-style JSON that `SanaWMTransformer3DModel` stores
// (`config.json` of a diffusers checkpoint, and the `config` entry of the golden files' safetensors
// metadata). The same format is the wmserve config-file format; two presets ship as
// worker/models/sana/presets/{tiny,sana-wm-2.6b}.json and are also compiled in (PresetJson), so the
// binary needs no files.
//
// Keys:
//   * diffusers keys: in_channels, num_layers, hidden_size, num_attention_heads, patch_size,
//     attn_type, camctrl_type, softmax_every_n, linear_head_dim, ffn_type, t_kernel_size,
//     conv_kernel_size, k_conv_only, pos_embed_type, qk_norm, cross_norm, y_norm,
//     y_norm_scale_factor, cam_attn_compress, init_cam_from_base, chunk_split_strategy,
//     use_chunk_plucker_post_attn, chunk_plucker_channels, chunk_plucker_post_attn_blocks,
//     fp32_attention, image_size, caption_channels, model_max_length, mlp_ratio, mlp_acts, use_pe,
//     learn_sigma, pred_sigma, mixed_precision. Absent keys keep the value of `defaults` (by
//     default the 2.6B release, which is also what the diffusers wrapper defaults to).
//   * wmserve extensions (ignored by diffusers): "wmserve_preset" (a name),
//     "wmserve_pixel_size" [H, W] (the model's pixel resolution, 704x1280),
//     "wmserve_vae_stride" [t, h, w] (VAE compression, [8, 32, 32]; the tiny preset uses
//     [8, 320, 320] to get its 2x4 latent grid at 704x1280, as the golden camera data does),
//     "wmserve_chunk_size" (latent frames per streaming chunk after the first, 3).
//   * keys starting with '_' (_class_name, _diffusers_version, ...) are ignored.
//   * any other key is an error unless `allow_unknown_keys` is set (then it is recorded in
//     `ignored_keys`).
//
// Values that are constants of the released code rather than config entries (norm epsilons, RoPE
// theta, the timestep sinusoid, the text-mask bias) are fields with fixed defaults; they are not
// read from JSON.
//
// Validate() enforces the spec §9 constraints and rejects variants the port does not implement,
// with one message per violation, all in one ConfigError.
#ifndef WMSERVE_WORKER_MODELS_SANA_SANA_CONFIG_H_
#define WMSERVE_WORKER_MODELS_SANA_SANA_CONFIG_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace wmserve::worker::sana {

// Complex-pair counts of one Wan 3D-RoPE table (dims = 2 x pairs).
struct RopeSplit {
  int t = 0;  // temporal pairs
  int h = 0;  // row pairs
  int w = 0;  // column pairs
  int pairs() const { return t + h + w; }
};

struct SanaConfig {
  std::string name = "sana-wm-2.6b";

  // --- architecture (diffusers keys) ---
  int in_channels = 128;          // LTX-2 latent channels; out_channels == in_channels
  int num_layers = 20;            // depth
  int hidden_size = 2240;         // C
  int num_attention_heads = 20;   // cross-attention heads
  std::array<int, 3> patch_size = {1, 1, 1};  // (t, h, w)
  std::string attn_type = "BidirectionalGDNTriton";
  std::string camctrl_type = "BidirectionalGDNUCPESinglePathLiteLABothTriton";
  int softmax_every_n = 4;        // blocks i with (i + 1) % n == 0 are softmax
  int linear_head_dim = 112;      // head dim of self-attention and the camera branch
  std::string ffn_type = "GLUMBConvTemp";
  double mlp_ratio = 3.0;
  std::array<std::string, 3> mlp_acts = {"silu", "silu", ""};  // "" = none (JSON null)
  int t_kernel_size = 3;          // FFN temporal conv kernel
  int conv_kernel_size = 4;       // GDN short conv kernel (K only)
  bool k_conv_only = true;
  std::string pos_embed_type = "wan_rope";  // or "casual_wan_rope" (streaming, absolute frames)
  bool qk_norm = true;
  bool cross_norm = true;
  bool y_norm = true;
  double y_norm_scale_factor = 0.01;  // attention_y_norm init; irrelevant once weights load
  int cam_attn_compress = 1;
  bool init_cam_from_base = true;
  std::string chunk_split_strategy = "first_chunk_plus_one";
  bool use_chunk_plucker_post_attn = true;
  int chunk_plucker_channels = 48;        // 6 x vae temporal stride
  int chunk_plucker_post_attn_blocks = 20;  // blocks i < n get plucker_proj; < 0 means all
  bool fp32_attention = true;
  int image_size = 720;                   // nominal; unused by the forward
  int caption_channels = 2304;            // gemma-2-2b-it hidden size
  int model_max_length = 300;             // text tokens
  bool use_pe = true;
  bool learn_sigma = false;
  bool pred_sigma = false;
  std::string mixed_precision = "bf16";

  // --- wmserve extensions ---
  int pixel_height = 704;
  int pixel_width = 1280;
  int vae_temporal_stride = 8;
  int vae_spatial_stride = 32;
  int chunk_size = 3;  // streaming: chunks are [0, 1 + chunk_size), then chunk_size frames each

  // --- constants of the released code (not read from JSON) ---
  double rope_theta = 10000.0;
  int rope_max_seq_len = 1024;
  int timestep_embed_dim = 256;        // sinusoid, [cos, sin] order
  double timestep_max_period = 10000.0;
  double timestep_norm_scale_factor = 1.0;  // 1.0: timesteps are truncated to integers
  double qk_norm_eps = 1e-5;           // q/k norms and camera q/k norms (RMSNorm over C)
  double cross_norm_eps = 1e-6;        // cross-attention q/k norms
  double y_norm_eps = 1e-5;            // attention_y_norm
  double layer_norm_eps = 1e-6;        // block and final LayerNorms (no affine)
  double gdn_eps = 1e-8;               // num / (den + eps)
  double text_mask_bias = -10000.0;    // additive key mask for padded text tokens

  // Keys skipped because allow_unknown_keys was set.
  std::vector<std::string> ignored_keys;

  // --- construction ---
  // Parses diffusers-style JSON (see the file comment). Throws ConfigError, or JsonError wrapped
  // in a ConfigError for syntax errors. Does not call Validate().
  static SanaConfig FromDiffusersJson(std::string_view json, const SanaConfig& defaults,
                                      bool allow_unknown_keys = false);
  static SanaConfig FromDiffusersJson(std::string_view json) {
    return FromDiffusersJson(json, SanaConfig());
  }
  // "tiny" or "sana-wm-2.6b", parsed from the compiled-in JSON and validated.
  static SanaConfig Preset(std::string_view name);
  // Reads `path` and parses it (defaults: the 2.6B release); validated.
  static SanaConfig FromFile(const std::string& path);

  // Serialises to the same JSON format (diffusers keys + wmserve extensions), pretty-printed.
  std::string ToJson() const;

  // Throws ConfigError listing every violated constraint.
  void Validate() const;

  // --- derived values ---
  int depth() const { return num_layers; }
  int out_channels() const { return in_channels; }
  int head_dim() const { return linear_head_dim; }              // D, self-attn + camera
  int num_heads() const { return hidden_size / linear_head_dim; }  // self-attn + camera heads
  int cross_head_dim() const { return hidden_size / num_attention_heads; }
  int cam_dim() const { return hidden_size / cam_attn_compress; }
  int ffn_hidden_features() const;  // int(C * mlp_ratio); the first 1x1 conv outputs twice this
  int timestep_modulation_dim() const { return 6 * hidden_size; }

  std::vector<int> SoftmaxBlocks() const;
  bool IsSoftmaxBlock(int block) const;
  // GDN blocks carry conv_k (the short conv); softmax blocks do not.
  bool HasShortConv(int block) const { return !IsSoftmaxBlock(block) && conv_kernel_size > 0; }
  bool HasPluckerProj(int block) const;

  // Wan RoPE split of a head of `dim` dims: h = w = floor(dim / 6) pairs, t = dim/2 - 2h pairs.
  static RopeSplit WanRopeSplit(int dim);
  RopeSplit rope_split() const { return WanRopeSplit(head_dim()); }
  // Camera branch: RoPE on the second half of each camera head, re-sliced from the main table.
  RopeSplit camera_rope_split() const { return WanRopeSplit(head_dim() / 2); }
  // Indices into the main table's complex pairs used by the camera RoPE, in order: the first
  // cam.t temporal pairs, the first cam.h row pairs, the first cam.w column pairs.
  // 112 -> t[0..10), h[20..29), w[38..47); 16 -> {0, 1, 4, 6}.
  std::vector<int> CameraRopePairIndices() const;
  // UCPE: the first half of each camera head is split into groups of 4 (homogeneous vectors).
  int ucpe_groups_per_head() const { return head_dim() / 2 / 4; }

  // Latent grid per frame: pixel size floor-divided by the VAE stride (as prepare_camera does).
  // With patch (1,1,1), the only patch size implemented, it is also the token grid.
  int latent_height() const { return pixel_height / vae_spatial_stride; }
  int latent_width() const { return pixel_width / vae_spatial_stride; }
  int tokens_per_frame() const { return latent_height() * latent_width(); }
  // Latent frames for F pixel frames: (F - 1) / temporal_stride + 1.
  int LatentFrames(int pixel_frames) const;

  // GDN key scale 1/sqrt(D * S), S = tokens per latent frame.
  double GdnKeyScale(int tokens_per_frame) const;
  double gdn_key_scale() const { return GdnKeyScale(tokens_per_frame()); }
  // Main softmax branch: 1/sqrt(D).
  double softmax_scale() const;
  // Camera softmax branch of the bidirectional reference: the head is zero-padded to 128 when
  // D is not in {32, 64, 128, 256} and D < 128, and SDPA runs without an explicit scale, so the
  // scale is 1/sqrt(128) (golden README §5.3). The streaming path uses softmax_scale() instead.
  // Head dims in (128, 256) not in that set are rejected by Validate() (the padding target is
  // unverified there).
  double camera_softmax_scale_bidirectional() const;
};

// The compiled-in preset JSON ("tiny", "sana-wm-2.6b"); throws ConfigError for other names.
std::string_view PresetJson(std::string_view name);
std::vector<std::string> PresetNames();

}  // namespace wmserve::worker::sana

#endif  // WMSERVE_WORKER_MODELS_SANA_SANA_CONFIG_H_
