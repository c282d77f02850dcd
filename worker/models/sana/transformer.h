// File: the SANA-WM Stage-1 transformer (`SanaMSVideoCamCtrl`, diffusers
// `SanaWMTransformer3DModel`): one bidirectional denoiser call.
//
// Depends on LibTorch and the C++ standard library only.
//
// An exact port of the reference the golden data was produced with (diffusers PR 13881,
// `transformer_sana_wm.py`; ../shared/golden/sana-wm-tiny/README.md), spec §1, §3.2-3.3:
//   * patch embedding (Conv3d k=1), per-frame adaLN-single timestep conditioning with the
//     integer truncation quirk (`timestep.long().float()`), caption MLP + attention_y_norm;
//   * 3D Wan RoPE; UCPE ray matrices from camera.h; chunk-Plücker embedding;
//   * blocks: frame-wise bidirectional GDN (K-only bidirectional short conv, RMSNorm, ReLU, key
//     scale 1/sqrt(D*S), per-token beta, per-frame gamma, RoPE'd numerator, fp32 scans via
//     gdn.h) or softmax attention (blocks i with (i+1) % softmax_every_n == 0), each with the
//     UCPE camera branch, then the Plücker injection, masked text cross-attention and the
//     GLUMBConvTemp FFN;
//   * final layer (per-frame shift/scale from the t embedding) and unpatchify: the
//     flow-matching velocity.
//
// Precision: everything runs in the parameter dtype (LoadWeights' dtype) except where the
// reference forces more: norms in float32, RoPE rotations in float64, the GDN and camera scans in
// float32 (`fp32_attention`), the output-gate SiLU in float32, the camera-softmax attention in
// float32.
//
// Semantics variants of the reference (golden README §5.1, §5.2) are SanaForwardOptions; the
// defaults reproduce `output.sample`, the released inference path.
//
// Errors: ConfigError for an invalid config, SafetensorsError for a weights file that does not
// match (one message listing every missing / unexpected / mis-shaped tensor), InvalidInputError
// for forward inputs of the wrong shape, naming the argument.
#ifndef WMSERVE_WORKER_MODELS_SANA_TRANSFORMER_H_
#define WMSERVE_WORKER_MODELS_SANA_TRANSFORMER_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "worker/models/sana/gdn.h"
#include "worker/models/sana/safetensors.h"
#include "worker/models/sana/sampler.h"
#include "worker/models/sana/sana_config.h"

namespace wmserve::worker::sana {

// Receives intermediate tensors during Forward, named like the golden file
// (bidirectional.safetensors): "inter.t_emb", "block.3.attn_out", ... (see Forward). The tensor
// is the live value (do not modify it; clone to keep).
using SanaTensorTap = std::function<void(const std::string& name, const at::Tensor& value)>;

struct SanaForwardOptions {
  // GDN / camera scan algorithm (gdn.h); the chunked default is the reference's.
  GdnScanOptions scan;
  // Post-UCPE RMS downscale (`_downscale_to_reference_rms`) of the camera q/k/v. The released
  // inference path (golden `output.sample`): off in GDN blocks (Triton `BothTriton` class), on
  // in softmax blocks. Both on = the diffusers CPU fallback (`..._torch_fallback_downscale_all`).
  bool gdn_camera_downscale = false;
  bool softmax_camera_downscale = true;
  // The reference casts float32 q/k/v to bfloat16 before both softmax SDPAs (main + camera)
  // even on CPU; the released fp32 path is taken without it (golden `output.sample_bf16_sdpa`).
  bool bf16_softmax = false;
  // First latent frame's RoPE position (0 for the bidirectional model; absolute frame index for
  // chunks of a `casual_wan_rope` model).
  int64_t rope_first_frame = 0;
  // Camera-branch softmax scale of the softmax blocks. true: the bidirectional reference's
  // quirk (head dim zero-padded to 128, SDPA default scale 1/sqrt(128); golden README §5.3);
  // false: 1/sqrt(D) as the NVlabs cached streaming path and sglang pass it.
  bool camera_softmax_padded_scale = true;
  // Optional: receives intermediates (no cost when empty).
  SanaTensorTap tap;
};

// The semantics of the released streaming code path (NVlabs @1a52678 cached classes; golden
// README §5.1, §5.3): no post-UCPE downscale anywhere, camera softmax scale 1/sqrt(D).
SanaForwardOptions StreamingForwardOptions();

// Streaming state of one block (spec §4.3 "per-block cache"). Tensors are undefined before the
// first KV-save pass. Everything is stored densely (own storage, no views into activations).
struct SanaBlockCache {
  // GDN blocks: forward-scan states (the whole history) of the main and the camera branch.
  GdnState gdn;          // kv (B, H, D, D), z (B, H, D, 1), float32
  at::Tensor cam_kv;     // (B, H, D, D) float32
  // GDN blocks: the last min(K-1, frames so far) frames of the short-conv INPUT (raw k, before
  // the RMSNorm), main and camera branch: (B, f, S, C).
  at::Tensor conv_k_tail, conv_k_cam_tail;
  // All blocks: the last min(kt/2, frames so far) frames of the pre-t_conv FFN features
  // (B, C, f, H*W).
  at::Tensor ffn_tail;
  // Softmax blocks: per cached chunk, post-RoPE main K/V and post-UCPE camera K/V,
  // (B, heads, tokens of the chunk, D) each, in cache order (sink first, then ascending).
  struct ChunkKv {
    int64_t chunk = 0;
    at::Tensor k, v, cam_k, cam_v;
  };
  std::vector<ChunkKv> kv;
  int64_t bytes() const;
};

// The streaming cache of a whole model: one entry per block plus the chunk bookkeeping. Only a
// KV-save pass (ForwardChunk with save_state) changes it.
struct SanaStreamingCache {
  KvWindowRule rule;        // softmax window (sink chunk 0 + the latest chunk by default)
  int64_t chunks = 0;       // committed chunks = index of the chunk the next pass processes
  int64_t next_frame = 0;   // first latent frame of that chunk
  std::vector<SanaBlockCache> blocks;  // empty until the first commit
  int64_t bytes() const;    // sum of the stored tensors' bytes
};

// What must be equal for streaming chunks of different rollouts to run as one batched forward
// (SanaTransformer::ForwardChunkBatch): the chunk length, and the shape of the history each
// chunk reads — token count of every softmax window entry, the short-conv and FFN tail lengths.
// Frame offsets, cameras, noise and texts may differ (texts are padded to one length). With the
// default window rule every rollout of a model is in one of three classes: chunk 0 (no history),
// chunk 1 (sink only), chunk >= 2 (sink + latest: the steady state, where co-batching pays).
struct StreamingBatchShape {
  int64_t chunk_frames = 0;
  int64_t history_frames = 0;           // 0 = the first chunk (empty cache)
  std::vector<int64_t> window_tokens;   // per cached chunk the softmax blocks attend to
  int64_t conv_tail_frames = 0, ffn_tail_frames = 0;
  bool operator==(const StreamingBatchShape& o) const {
    return chunk_frames == o.chunk_frames && history_frames == o.history_frames &&
           window_tokens == o.window_tokens && conv_tail_frames == o.conv_tail_frames &&
           ffn_tail_frames == o.ffn_tail_frames;
  }
  bool operator!=(const StreamingBatchShape& o) const { return !(*this == o); }
  std::string ToString() const;
};

// The batch shape of the next chunk (`chunk_frames` latent frames) read from `cache`.
StreamingBatchShape StreamingBatchShapeOf(const SanaStreamingCache& cache, int64_t chunk_frames);

// Supplies a parameter (official name, expected shape) for SanaTransformer::LoadWeights.
using SanaTensorSource =
    std::function<at::Tensor(const std::string& name, const std::vector<int64_t>& shape)>;

// All parameters of one block, by their official names under "blocks.{i}.".
struct SanaBlockWeights {
  at::Tensor scale_shift_table;  // (6, C)
  // attn.* (main branch, gates, output gate, projection)
  at::Tensor qkv_weight;         // attn.qkv.weight (3C, C), no bias
  at::Tensor q_norm, k_norm;     // attn.{q,k}_norm.weight (C)
  at::Tensor conv_k;             // attn.conv_k.weight (C, 1, K), GDN blocks only
  at::Tensor beta_proj_weight, beta_proj_bias, gate_proj_weight, gate_proj_bias;  // (H, C), (H)
  at::Tensor a_log, dt_bias;     // attn.A_log, attn.dt_bias (H)
  at::Tensor recall_gate;        // attn.recall_gate (1), unused
  at::Tensor output_gate_weight, output_gate_bias;  // (C, C), (C)
  at::Tensor proj_weight, proj_bias;                // (C, C), (C)
  // attn.* camera branch
  at::Tensor q_proj_cam_weight, q_proj_cam_bias, k_proj_cam_weight, k_proj_cam_bias;
  at::Tensor v_proj_cam_weight, v_proj_cam_bias, out_proj_cam_weight, out_proj_cam_bias;
  at::Tensor q_norm_cam, k_norm_cam;  // (C)
  at::Tensor conv_k_cam;              // (C, 1, K), GDN blocks only
  // Not an official tensor: one (3C, C) / (3C) buffer holding q/k/v_proj_cam (which are views
  // into it), so that the camera projections run as one GEMM like the reference.
  at::Tensor cam_qkv_weight, cam_qkv_bias;
  // cross_attn.*
  at::Tensor cross_q_weight, cross_q_bias, cross_kv_weight, cross_kv_bias;
  at::Tensor cross_proj_weight, cross_proj_bias, cross_q_norm, cross_k_norm;
  // mlp.* (GLUMBConvTemp)
  at::Tensor inverted_conv_weight, inverted_conv_bias;  // (2F, C, 1, 1), (2F)
  at::Tensor depth_conv_weight, depth_conv_bias;        // (2F, 1, 3, 3), (2F)
  at::Tensor point_conv_weight;                         // (C, F, 1, 1)
  at::Tensor t_conv_weight;                             // (C, C, kt, 1)
  // plucker_proj.* (blocks i < chunk_plucker_post_attn_blocks)
  at::Tensor plucker_proj_weight, plucker_proj_bias;
};

struct SanaWeights {
  at::Tensor x_embedder_weight, x_embedder_bias;          // (C, Cin, 1, 1, 1), (C)
  at::Tensor plucker_embedder_weight, plucker_embedder_bias;  // (C, 48, 1, 1, 1), (C)
  at::Tensor raymap_embedder_weight, raymap_embedder_bias;    // (C, 3, 1, 1, 1), unused
  at::Tensor t_mlp0_weight, t_mlp0_bias, t_mlp2_weight, t_mlp2_bias;  // t_embedder.mlp.{0,2}
  at::Tensor t_block_weight, t_block_bias;                    // t_block.1 (6C, C), (6C)
  at::Tensor y_embedding;                                     // (L, Ccap), unused
  at::Tensor y_fc1_weight, y_fc1_bias, y_fc2_weight, y_fc2_bias;  // y_embedder.y_proj.fc{1,2}
  at::Tensor attention_y_norm;                                // (C)
  at::Tensor final_scale_shift_table;                         // (2, C)
  at::Tensor final_linear_weight, final_linear_bias;          // (Cout, C), (Cout)
  std::vector<SanaBlockWeights> blocks;
};

class SanaTransformer {
 public:
  // Validates the config (ConfigError). Parameters stay undefined until LoadWeights.
  explicit SanaTransformer(SanaConfig config);

  const SanaConfig& config() const { return config_; }

  // Official parameter name -> shape, derived from the config alone (no allocation). Exactly the
  // tensors of the model's state_dict (including the ones the forward does not use:
  // raymap_embedder.*, y_embedder.y_embedding, attn.recall_gate, and the gate parameters of the
  // softmax blocks). The released checkpoint additionally has `pos_embed` (IgnoredTensors).
  static std::map<std::string, std::vector<int64_t>> ExpectedParameters(const SanaConfig& config);
  std::map<std::string, std::vector<int64_t>> ExpectedParameters() const {
    return ExpectedParameters(config_);
  }
  // Total number of parameter values (sum over ExpectedParameters).
  static int64_t ParameterCount(const SanaConfig& config);

  // Tensors a checkpoint may carry that the model ignores.
  static const std::set<std::string>& IgnoredTensors();

  // Checks the file against ExpectedParameters (SafetensorsError listing every missing,
  // unexpected and mis-shaped tensor, before anything is loaded), then loads every parameter as
  // `dtype` on `device`.
  void LoadWeights(const SafetensorsFile& file, c10::ScalarType dtype = c10::ScalarType::Float,
                   c10::Device device = c10::Device(c10::kCPU));
  // Loads every parameter from `source` (any dtype/device; converted), e.g. random weights for
  // tests and benchmarks. Throws SafetensorsError naming a tensor of the wrong shape.
  void LoadWeights(const SanaTensorSource& source, c10::ScalarType dtype = c10::ScalarType::Float,
                   c10::Device device = c10::Device(c10::kCPU));
  bool loaded() const { return loaded_; }
  c10::ScalarType dtype() const { return dtype_; }
  c10::Device device() const { return device_; }

  // The parameter `name` (official name; undefined before LoadWeights); throws
  // std::out_of_range naming it when the model has no such parameter.
  const at::Tensor& Parameter(const std::string& name) const;
  const SanaWeights& weights() const { return weights_; }

  // One denoiser call:
  //   hidden_states          (B, Cin, T, H, W)  latents, frame 0 the clean image latent
  //   timestep               (B, 1, T)          per-frame timesteps (truncated to integers)
  //   encoder_hidden_states  (B, 1, L, Ccap)    text embeddings
  //   encoder_attention_mask (B, L)             1 = keep, 0 = pad; undefined = keep all
  //   camera_conditions      (B, T, 20)         [c2w row-major 16, fx, fy, cx, cy] (latent px);
  //                                             undefined = no camera branch
  //   chunk_plucker          (B, 48, T, H, W)   undefined = no Plücker injection
  // -> velocity (B, Cin, T, H, W) in the parameter dtype, on the parameter device (inputs are
  // moved there). Intermediates passed to options.tap (shapes as in the golden file):
  //   inter.timestep_used (B*T), inter.timestep_truncated (B,1,T), inter.t_emb (B,1,T,C),
  //   inter.t0 (B,1,T,6C), inter.x_embed (B,N,C), inter.plucker_emb (B,N,C),
  //   inter.y_proj / inter.y_embed (B,1,L,C), inter.rope_freqs (N,P,2),
  //   inter.raymats (B,T,H,W,4,4), inter.final_layer_out (B,N,Cout), and per block i:
  //   block.{i}.{attn_in, attn_out, attn_combined, attn_gated, cam_raw, cam_contrib,
  //   plucker_add, cross_in, cross_out, mlp_in, mlp_out, out} (B,N,C); GDN blocks also
  //   block.{i}.{beta (B,H,T,S), decay (B,H,T), main_raw (B,N,C)},
  //   block.{i}.main.in.{q,k,v,q_rot,k_rot} (B,H,D,N) and
  //   block.{i}.cam.in.{q_rot,k_rot,v} (B,H,D,N), block.{i}.cam.in.beta (B,H,T,S),
  //   block.{i}.cam.out (B,H,D,N) (the summed scans, before the inverse UCPE).
  at::Tensor Forward(const at::Tensor& hidden_states, const at::Tensor& timestep,
                     const at::Tensor& encoder_hidden_states,
                     const at::Tensor& encoder_attention_mask,
                     const at::Tensor& camera_conditions, const at::Tensor& chunk_plucker,
                     const SanaForwardOptions& options = {}) const;

  // One streaming (chunk-causal, cached) forward over the latent frames
  // [frame_offset, frame_offset + t) of a rollout (spec §4.3):
  //   hidden_states (B, Cin, t, H, W), timestep (B, 1, t), camera_conditions (B, t, 20) and
  //   chunk_plucker (B, 48, t, H, W) are the chunk's frames (rows of the whole-rollout tensors;
  //   each Plücker row already holds its 8-raw-frame window); text as Forward.
  // RoPE positions are absolute (frame_offset..). The chunk attends to / scans over itself plus
  // the history in `cache`: GDN forward scans seeded from the cached states (backward scans and
  // the backward short conv isolated inside the chunk), short conv / FFN t_conv left context
  // from the cached tails (right edge zero-padded), softmax keys = the cached chunks of
  // cache.rule's window + the chunk itself (no mask).
  // `frame_offset` must equal cache.next_frame (InvalidInputError otherwise). With save_state
  // false the cache is only read; with save_state true (the KV-save pass) the pass's states,
  // tails and K/V are committed to `cache` (evicting chunks outside the window) and the chunk
  // counts as processed. Returns the velocity (B, Cin, t, H, W).
  at::Tensor ForwardChunk(const at::Tensor& hidden_states, const at::Tensor& timestep,
                          const at::Tensor& encoder_hidden_states,
                          const at::Tensor& encoder_attention_mask,
                          const at::Tensor& camera_conditions, const at::Tensor& chunk_plucker,
                          int64_t frame_offset, SanaStreamingCache& cache, bool save_state,
                          const SanaForwardOptions& options = {}) const;

  // ForwardChunk for several rollouts at once: row b of every input belongs to the rollout whose
  // cache is caches[b] (one batch row per cache), each at its own frame offset
  // (caches[b]->next_frame: per-sample RoPE positions). The caches must have equal
  // StreamingBatchShapeOf (InvalidInputError naming the first that differs) and the same window
  // rule; their histories are concatenated along the batch for the pass and, with save_state,
  // each cache receives its own row of the new state (own storage, so members leave the batch
  // independently). Equals ForwardChunk on each row alone up to floating-point reassociation.
  at::Tensor ForwardChunkBatch(const at::Tensor& hidden_states, const at::Tensor& timestep,
                               const at::Tensor& encoder_hidden_states,
                               const at::Tensor& encoder_attention_mask,
                               const at::Tensor& camera_conditions,
                               const at::Tensor& chunk_plucker,
                               const std::vector<SanaStreamingCache*>& caches, bool save_state,
                               const SanaForwardOptions& options = {}) const;

  // The chunk-causal model over a whole sequence without any cache (the reference for
  // ForwardChunk): the same inputs as Forward plus the chunk plan (ranges tiling [0, T)). GDN
  // forward scans and forward short conv run globally, backward scans / backward short conv
  // restart inside every chunk, the FFN t_conv of a chunk sees the previous frames on the left
  // and zeros on the right, softmax attention is masked: chunk j attends to
  // CachedChunksFor(j, rule) and itself. Chunk by chunk, ForwardChunk with save_state on every
  // chunk at the same timesteps gives the same output.
  at::Tensor ForwardChunkCausal(const at::Tensor& hidden_states, const at::Tensor& timestep,
                                const at::Tensor& encoder_hidden_states,
                                const at::Tensor& encoder_attention_mask,
                                const at::Tensor& camera_conditions,
                                const at::Tensor& chunk_plucker,
                                const std::vector<FrameRange>& plan, const KvWindowRule& rule = {},
                                const SanaForwardOptions& options = {}) const;

 private:
  // Per-forward state shared by the blocks (transformer_context.h).
  struct Context;

  // The common tail of both attention kinds (blocks.cc): the camera branch's restored heads
  // become its contribution to the attention output; then the output gate and projection.
  static at::Tensor AddCameraContribution(const at::Tensor& restored, const SanaBlockWeights& w,
                                          const std::string& prefix, const Context& ctx,
                                          const at::Tensor& combined);
  static at::Tensor GatedOutput(const at::Tensor& h, const SanaBlockWeights& w,
                                const std::string& prefix, const Context& ctx,
                                const at::Tensor& combined);

  at::Tensor ForwardImpl(const at::Tensor& hidden_states, const at::Tensor& timestep,
                         const at::Tensor& encoder_hidden_states,
                         const at::Tensor& encoder_attention_mask,
                         const at::Tensor& camera_conditions, const at::Tensor& chunk_plucker,
                         const SanaForwardOptions& options, Context& ctx) const;
  void LoadFrom(const SanaTensorSource& source, c10::ScalarType dtype, c10::Device device);

  // Calls fn(official name, shape, slot) for every parameter (a fixed order); slot points
  // into `weights` (nullptr when `weights` is null), which must have config.num_layers blocks.
  static void ForEachParameter(const SanaConfig& config, SanaWeights* weights,
                               const std::function<void(const std::string&, std::vector<int64_t>,
                                                        at::Tensor*)>& fn);

  at::Tensor Block(int index, const at::Tensor& x, const Context& ctx) const;
  at::Tensor GdnAttention(int index, const at::Tensor& h, const Context& ctx) const;
  at::Tensor SoftmaxAttention(int index, const at::Tensor& h, const Context& ctx) const;
  at::Tensor CrossAttention(int index, const at::Tensor& x, const Context& ctx) const;
  at::Tensor Ffn(int index, const at::Tensor& h, const Context& ctx) const;

  SanaConfig config_;
  SanaWeights weights_;
  bool loaded_ = false;
  c10::ScalarType dtype_ = c10::ScalarType::Float;
  c10::Device device_ = c10::Device(c10::kCPU);
};

}  // namespace wmserve::worker::sana

#endif  // WMSERVE_WORKER_MODELS_SANA_TRANSFORMER_H_
