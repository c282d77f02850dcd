// File: the LTX-2.0 video transformer (`LTX2VideoTransformer3DModel`), video-only path, as
// SANA-WM's Stage-2 refiner runs it (S-REF `_forward_video_only`, `_forward_video_block`,
// `_streaming_self_attention`).
//
// Depends on LibTorch and the C++ standard library only. Compiles against LibTorch 1.13 and 2.x
// (attention through sana::ScaledDotProductAttention).
//
// Spec: ltx2-spec.md §2.2-2.6 (forward), §2.8-2.10 (names, counts, cost), §3 (driving); exact
// semantics: ../shared/golden/ltx2-refiner-tiny/README.md §3.1, §5.
//
// One forward on packed tokens (B, N, C_in) (token n = (f*H + h)*W + w):
//   proj_in -> adaLN-single timestep embedding (per token, or per contiguous token group) ->
//   per block: RMSNorm + modulation -> self-attention (QK-RMSNorm over D, split RoPE) x gate ->
//   cross-attention to the projected text (no modulation, no gate) -> RMSNorm + modulation ->
//   GELU-tanh FFN x gate -> LayerNorm + modulation by the embedded timestep -> proj_out:
//   the flow-matching velocity (B, N, C_out).
//
// Self-attention patterns (Ltx2ForwardOptions):
//   * kFull: every token attends to every token (optionally under an explicit mask);
//   * kSinkCurrent: the first n_context_tokens ("sink") attend to themselves only, the rest
//     attend to all tokens — the reference's two SDPA calls (spec §3.2);
//   * kPrefix: the streaming block (spec §3.3): per layer, keys/values = [prefix, block] where
//     the prefix (re-RoPE'd sink + post-RoPE history) already sits at the start of a per-layer
//     K/V workspace; the block's post-RoPE K/V are written right after it and one unmasked SDPA
//     runs over the filled part. No concatenation per step.
// A capture forward records per layer the block's K (pre- or post-RoPE) and V and may skip the
// output projection (and everything after the last layer's K/V).
//
// Precision: the parameter dtype everywhere, except: RMSNorm statistics in float32, RoPE applied
// in float32 (tables are float32), timestep sinusoid in float32, cross-attention mask bias in the
// parameter dtype — as the reference.
//
// Memory (spec §2.10): the timestep modulation is computed per token group (Ltx2Timesteps::
// Grouped / Uniform) and broadcast, so no (N, 6 D) tensor exists when a group shares a timestep;
// the text K/V of every layer are computed once per prompt (Ltx2TextContext) and reused.
//
// Errors: ConfigError (invalid config), SafetensorsError (a weights file that does not match:
// one message listing every missing / unexpected / mis-shaped tensor), InvalidInputError (forward
// inputs of the wrong shape, naming the argument), std::runtime_error (no weights loaded).
#ifndef WMSERVE_WORKER_MODELS_LTX2_LTX2_TRANSFORMER_H_
#define WMSERVE_WORKER_MODELS_LTX2_LTX2_TRANSFORMER_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "worker/models/ltx2/refiner_config.h"
#include "worker/models/sana/safetensors.h"

namespace wmserve::worker::ltx2 {

// --- RoPE (spec §2.4; golden README §5.1) ----------------------------------------------------

// How the rotation angles are formed. kReference follows the reference's precision:
// positions, u = 2p - 1 and u * omega in float32 (omega reaches 15708, so float64 angles move the
// tables by up to 8e-4). kFloat64 forms them in float64 (for invariant tests that need exact
// relative-position arithmetic).
enum class RopeAngles { kReference, kFloat64 };

// Split-RoPE cos/sin tables of a token sequence, batch-independent, float32 on a device.
struct Ltx2RopeTable {
  at::Tensor cos;  // (N, heads, head_dim / 2)
  at::Tensor sin;
  int64_t tokens() const { return cos.defined() ? cos.size(0) : 0; }
  // The reference's layout (B, heads, N, head_dim / 2) (golden inter.rope_cos, rope.*).
  at::Tensor CosBhnr(int64_t batch) const;
  at::Tensor SinBhnr(int64_t batch) const;
};

// Tables for the token grid (frames x height x width), frames given by their absolute latent
// frame indices (any non-negative integers, in token order; e.g. {offset} for a re-RoPE'd sink,
// {4, 5, 6} for a streaming block). Time: latent frame f covers pixel frames
// [max(8f + 1 - 8, 0), 8(f + 1) + 1 - 8) / fps (scale factors and causal offset from the config);
// height / width [32h, 32h + 32) pixels; midpoints / (20 s, 2048, 2048), u = 2p - 1; omega_k =
// (pi/2) theta^(k / (K - 1)) (float64 grid cast to float32); angle slot 3k + axis; D/2 - 3K
// identity slots first. Throws InvalidInputError for an empty grid, a negative frame or fps <= 0.
Ltx2RopeTable BuildRopeTable(const TransformerConfig& config,
                             const std::vector<int64_t>& frame_positions, int64_t height,
                             int64_t width, double fps, c10::Device device = c10::Device(c10::kCPU),
                             RopeAngles angles = RopeAngles::kReference);

// The per-token [start, end) coordinates behind BuildRopeTable: (3, N, 2) float32 (time in
// seconds, height and width in pixels), the golden `inter.rope_coords` without the batch dim.
at::Tensor RopeCoordinates(const TransformerConfig& config,
                           const std::vector<int64_t>& frame_positions, int64_t height,
                           int64_t width, double fps);

// `apply_split_rotary_emb` on (B, N, heads * head_dim) features: per head, x1 = x[:half],
// x2 = x[half:], out1 = x1 cos - x2 sin, out2 = x2 cos + x1 sin, in float32, returned in x's dtype.
at::Tensor ApplySplitRope(const at::Tensor& x, const Ltx2RopeTable& table);

// Contiguous frame positions [first, first + count).
std::vector<int64_t> FrameRange(int64_t first, int64_t count);

// --- token packing (S-REF `_pack_latents` with patch 1; golden README §5.10) ------------------

// (B, C, T, H, W) -> (B, T*H*W, C), token n = (f*H + h)*W + w.
at::Tensor PackLatentTokens(const at::Tensor& latents);
// The inverse: (B, T*H*W, C) -> (B, C, T, H, W).
at::Tensor UnpackLatentTokens(const at::Tensor& tokens, int64_t frames, int64_t height,
                              int64_t width);

// --- timesteps (spec §2.3) --------------------------------------------------------------------

// Model timesteps (sigma x timestep_scale_multiplier, fractional, not truncated) of a forward's
// tokens. Values are float32 (moved to the model's device).
struct Ltx2Timesteps {
  // One timestep per token, (B, N): the reference's layout. The modulation is materialised per
  // token, (B, N, 6 D) — use Grouped when tokens share values.
  static Ltx2Timesteps PerToken(at::Tensor values);
  // Contiguous token groups: values (B, G), group g covering `lengths[g]` tokens (in order, summing
  // to N). The embedding MLP runs on B*G values and the modulation is broadcast over each group.
  static Ltx2Timesteps Grouped(at::Tensor values, std::vector<int64_t> lengths);
  // Every token of sample b at values[b]: values (B,) — a single group.
  static Ltx2Timesteps Uniform(at::Tensor values, int64_t tokens);

  at::Tensor values;                   // (B, N) per token, or (B, G)
  std::vector<int64_t> group_lengths;  // empty for per-token
  bool per_token() const { return group_lengths.empty(); }
};

// --- text context (spec §2.5 CrossAttn, §2.7 step 6) -----------------------------------------

// The projected text and (optionally) every layer's cross-attention K/V for one prompt: computed
// once (Ltx2Transformer::PrepareText) and reused by every forward of a rollout (S-REF
// `_set_cross_attention_kv_cache`; spec invariant 17: cached == uncached).
struct Ltx2TextContext {
  at::Tensor projected;  // caption_projection(text): (B, L, D), parameter dtype
  // Additive cross-attention bias (1 - mask) * -10000, (B, 1, 1, L) in the parameter dtype;
  // undefined when the mask is absent or all ones (the reference drops it then).
  at::Tensor bias;
  // Per layer, K = norm_k(to_k(projected)) and V = to_v(projected) as (B, heads, L, head_dim);
  // empty when prepared without the cache (each forward then projects them per layer).
  std::vector<at::Tensor> k, v;
  int64_t batch() const { return projected.defined() ? projected.size(0) : 0; }
  int64_t length() const { return projected.defined() ? projected.size(1) : 0; }
  bool cached() const { return !k.empty(); }
  int64_t bytes() const;
};

// --- forward options -------------------------------------------------------------------------

// Receives intermediates named like golden forward.safetensors: "inter.proj_in" (B,N,D),
// "inter.timestep_sinusoid" (rows, 256), "inter.embedded_timestep" (rows, D), "inter.temb"
// (rows, 6D) (rows = B*N per token, B*G grouped), "block.{i}.attn1_in", "block.{i}.attn1_k_pre_rope",
// "block.{i}.attn1_k_post_rope", "block.{i}.attn1_v", "block.{i}.attn1_out", "block.{i}.attn2_in",
// "block.{i}.attn2_out", "block.{i}.ff_in", "block.{i}.ff_out", "block.{i}.out",
// "inter.norm_out" (B,N,D). Values are live tensors (the residual stream is updated in place):
// clone to keep.
using Ltx2TensorTap = std::function<void(const std::string& name, const at::Tensor& value)>;

// One layer's self-attention keys and values, (B, tokens, D) each (heads flattened, like the
// reference's captures).
struct Ltx2LayerKv {
  at::Tensor k, v;
};

enum class AttentionPattern { kFull, kSinkCurrent, kPrefix };
enum class KvCapture { kNone, kPreRope, kPostRope };

struct Ltx2ForwardOptions {
  AttentionPattern pattern = AttentionPattern::kFull;
  // kFull: optional mask over (N_q, N_k) = (N, N), shape (N, N) or (B, 1, N, N): bool (true =
  // attend; no row may be all false) or additive float.
  at::Tensor self_attention_mask;
  // kSinkCurrent: the leading tokens that attend only among themselves (0 or N = kFull).
  int64_t n_context_tokens = 0;
  // kPrefix: one workspace per layer, k/v (B, capacity, D) in the parameter dtype on its device;
  // the first `prefix_tokens` rows hold the prefix. The forward writes the block's post-RoPE K
  // and V to rows [prefix_tokens, prefix_tokens + N) and attends over rows [0, prefix_tokens + N).
  std::vector<Ltx2LayerKv>* kv_workspace = nullptr;
  int64_t prefix_tokens = 0;
  // Record each layer's block K (after norm_k; before or after RoPE) and V into
  // Ltx2ForwardResult::captured. With kPrefix + kPostRope these are views of the workspace rows.
  KvCapture capture = KvCapture::kNone;
  // Skip the output layer (velocity undefined); with a capture also everything in the last layer
  // after its K/V (the reference's `skip_output_projection` + `CAPTURE_KV_ONLY_LAST`, exact for
  // the captured tensors).
  bool skip_output = false;
  Ltx2TensorTap tap;
};

struct Ltx2ForwardResult {
  at::Tensor velocity;                 // (B, N, C_out), parameter dtype; undefined if skip_output
  std::vector<Ltx2LayerKv> captured;   // num_layers entries when a capture was requested
};

// Supplies a parameter (official name, expected shape) for Ltx2Transformer::LoadWeights.
using Ltx2TensorSource =
    std::function<at::Tensor(const std::string& name, const std::vector<int64_t>& shape)>;

struct Ltx2BlockWeights {
  at::Tensor scale_shift_table;                   // (6, D)
  // attn1.to_{q,k,v} live in one (3D, D) / (3D) buffer (one GEMM, an exact rewrite; S-REF
  // `SANA_WM_REFINER_FUSE_SELF_QKV`); the official tensors are views into it.
  at::Tensor qkv_weight, qkv_bias;
  at::Tensor q_weight, q_bias, k_weight, k_bias, v_weight, v_bias;
  at::Tensor norm_q, norm_k;                      // (D)
  at::Tensor out_weight, out_bias;                // attn1.to_out.0
  at::Tensor cross_q_weight, cross_q_bias, cross_k_weight, cross_k_bias;
  at::Tensor cross_v_weight, cross_v_bias, cross_out_weight, cross_out_bias;
  at::Tensor cross_norm_q, cross_norm_k;
  at::Tensor ff_in_weight, ff_in_bias;            // ff.net.0.proj (F, D), (F)
  at::Tensor ff_out_weight, ff_out_bias;          // ff.net.2 (D, F), (D)
};

struct Ltx2Weights {
  at::Tensor proj_in_weight, proj_in_bias;
  at::Tensor t_linear1_weight, t_linear1_bias;    // time_embed.emb.timestep_embedder.linear_1
  at::Tensor t_linear2_weight, t_linear2_bias;    // ... linear_2
  at::Tensor t_mod_weight, t_mod_bias;            // time_embed.linear (6D, D)
  at::Tensor caption1_weight, caption1_bias;      // caption_projection.linear_1
  at::Tensor caption2_weight, caption2_bias;      // caption_projection.linear_2
  at::Tensor scale_shift_table;                   // (2, D)
  at::Tensor proj_out_weight, proj_out_bias;
  std::vector<Ltx2BlockWeights> blocks;
};

class Ltx2Transformer {
 public:
  // Validates the config (ConfigError). Parameters stay undefined until weights are loaded.
  explicit Ltx2Transformer(TransformerConfig config);

  const TransformerConfig& config() const { return config_; }

  // Official parameter name -> shape of the video path (spec §2.8), from the config alone.
  static std::map<std::string, std::vector<int64_t>> ExpectedParameters(
      const TransformerConfig& config);
  std::map<std::string, std::vector<int64_t>> ExpectedParameters() const {
    return ExpectedParameters(config_);
  }
  // Number of parameter values of the video path, from the shapes (no allocation):
  // 13,041,520,768 for LTX-2.0, 187,080 for tiny (spec §2.9, invariant 11).
  static int64_t ParameterCount(const TransformerConfig& config);
  int64_t ParameterCount() const { return ParameterCount(config_); }

  // Prefix patterns ("...*") of the checkpoint tensors the video path ignores: the audio stream
  // and audio<->video cross-attention (spec §2.8 "Keys to ignore"). With these a full public
  // LTX-2.0 checkpoint passes the strict check.
  static std::set<std::string> IgnoredTensorPatterns(const TransformerConfig& config);

  // Checks the file strictly against ExpectedParameters (minus the ignored patterns) before
  // loading anything, then loads every video-path parameter as `dtype` on `device`.
  void LoadWeights(const sana::SafetensorsFile& file, c10::ScalarType dtype = c10::kFloat,
                   c10::Device device = c10::Device(c10::kCPU));
  // Loads every parameter from `source` (converted to dtype/device). Throws SafetensorsError
  // naming a tensor of the wrong shape.
  void LoadWeights(const Ltx2TensorSource& source, c10::ScalarType dtype = c10::kFloat,
                   c10::Device device = c10::Device(c10::kCPU));
  // Seeded random weights at any preset under the golden init rules (golden README §4.1):
  // Linear weights N(0,1)/sqrt(fan_in), biases 0.1 N(0,1), scale_shift_tables N(0,1)/sqrt(D),
  // norm_q/norm_k weights 1 + 0.1 N(0,1). Each tensor from its own generator seeded by (seed,
  // name), drawn in float32 on `device`: deterministic for (seed, device type).
  void InitDummyWeights(uint64_t seed, c10::ScalarType dtype = c10::kFloat,
                        c10::Device device = c10::Device(c10::kCPU));

  bool loaded() const { return loaded_; }
  c10::ScalarType dtype() const { return dtype_; }
  c10::Device device() const { return device_; }
  // Bytes of the loaded parameters (ParameterCount x element size).
  int64_t WeightBytes() const;
  // The parameter `name` (official name); std::out_of_range when there is none.
  const at::Tensor& Parameter(const std::string& name) const;
  const Ltx2Weights& weights() const { return weights_; }

  // The per-prompt text context: caption_projection(text) (text (B, L, caption_channels)), the
  // mask bias (mask (B, L), nonzero = keep; undefined = keep all) and, with cache_kv, every
  // layer's cross-attention K/V. Throws InvalidInputError for wrong shapes or non-finite text.
  Ltx2TextContext PrepareText(const at::Tensor& text, const at::Tensor& mask = {},
                              bool cache_kv = true) const;

  // RoPE tables on the model's device (BuildRopeTable).
  Ltx2RopeTable Rope(const std::vector<int64_t>& frame_positions, int64_t height, int64_t width,
                     double fps, RopeAngles angles = RopeAngles::kReference) const;

  // One forward. tokens (B, N, C_in) (any float dtype; cast to the parameter dtype), timesteps
  // for those tokens, RoPE tables of N tokens, the text context of batch B.
  Ltx2ForwardResult Forward(const at::Tensor& tokens, const Ltx2Timesteps& timesteps,
                            const Ltx2RopeTable& rope, const Ltx2TextContext& text,
                            const Ltx2ForwardOptions& options = {}) const;

 private:
  struct Modulation;  // per-forward timestep modulation (ltx2_transformer.cc)

  static void ForEachParameter(
      const TransformerConfig& config, Ltx2Weights* weights,
      const std::function<void(const std::string&, std::vector<int64_t>, at::Tensor*)>& fn);
  void LoadFrom(const Ltx2TensorSource& source, c10::ScalarType dtype, c10::Device device);
  void RequireLoaded(const char* what) const;

  // Cross-attention K/V of one layer from the projected text, (B, heads, L, head_dim).
  void CrossKv(int layer, const at::Tensor& projected, at::Tensor* k, at::Tensor* v) const;

  TransformerConfig config_;
  Ltx2Weights weights_;
  bool loaded_ = false;
  c10::ScalarType dtype_ = c10::kFloat;
  c10::Device device_ = c10::Device(c10::kCPU);
};

}  // namespace wmserve::worker::ltx2

#endif  // WMSERVE_WORKER_MODELS_LTX2_LTX2_TRANSFORMER_H_
