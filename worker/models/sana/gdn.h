// File: the frame-wise Gated DeltaNet (GDN) scans of SANA-WM's Stage-1 backbone.
//
// This is the recurrence at the heart of the 15 GDN blocks (spec §1.4) and of their camera branch
// (spec §3.2, step 7). Everything else of a GDN block (projections, short conv, RMSNorm, ReLU, key
// scale, RoPE, UCPE, output gate, projection) happens outside these functions: the scans take the
// already-activated, already-scaled and already-rotated q/k exactly as the reference scan
// functions do (`torch_chunk_sana_gdn`, `torch_chunk_cam_single_path_delta_rule` in the diffusers
// port). The only block-level helper here is the gate computation (`ComputeFrameGates`).
//
// Dependencies: LibTorch and the C++ standard library only.
//
// ---------------------------------------------------------------------------------------------
// Layout (the reference's): for one head,
//   B batch, H heads, D head dim (Dk for q/k, Dv for v; equal in SANA-WM), T latent frames,
//   S tokens per frame, N = T*S tokens, token n = t*S + s (frame-major, (h, w) row-major inside).
//   q, k, q_rot, k_rot : (B, H, Dk, N)
//   v                  : (B, H, Dv, N)
//   beta               : (B, H, T, S) per token, or (B, H, T) per frame (broadcast over S)
//   decay (gamma)      : (B, H, T), one decay per frame and head
//   numerator outputs  : (B, H, Dv, N);  denominator outputs: (B, H, 1, N)
//   state              : kv (B, H, Dv, Dk) in V x K layout (readout S q); z (B, H, Dk, 1)
//
// Recurrence (one step = one whole frame, all S tokens of the frame enter at once):
//   S_t = gamma_t * S_{t-1} (I - K~_t diag(beta_t) K~_t^T) + V_t diag(beta_t) K~_t^T
//   z_t = gamma_t * (I - K_t diag(beta_t) K_t^T) z_{t-1} + K_t beta_t
//   num_t = S_t Q~_t,  den_t = z_t^T Q_t
// where K~ = k_rot, Q~ = q_rot (numerator only) and K = k, Q = q un-rotated (denominator). This
// is the same as the spec's step form  S <- gamma S;  S <- S + (V - S K~) diag(beta) K~^T.
//
// Forward scan = inclusive (frame t sees frames 0..t). Backward scan = exclusive (frame t sees
// frames t+1..T-1, the state built from the last frame down, using gamma_{t+1}.. of the frames it
// absorbs); this is what the reference obtains by running the forward scan on flip-and-shifted
// inputs (`FlipShiftForBackward`). Bidirectional output = (num_f + num_b) / (den_f + den_b + eps)
// with eps = kGdnEps; the camera branch has no denominator and sums: out = fwd + bwd.
//
// Numerics: every scan converts its inputs to float32 and computes and returns float32, whatever
// the input dtype (the reference forces fp32 "to preserve recurrent stability"); callers cast the
// result back. Tensors may live on any device, but all on the same one.
//
// Errors: misuse (undefined tensors, wrong ranks/shapes, N not divisible by T, mismatched state,
// bad chunk sizes, mixed devices, non-floating dtypes) throws std::runtime_error naming the
// function and the offending tensor and shapes.
#ifndef WMSERVE_WORKER_MODELS_SANA_GDN_H_
#define WMSERVE_WORKER_MODELS_SANA_GDN_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace wmserve::worker::sana {

// The eps of num / (den + eps) that the GDN blocks pass (spec §1.4; golden README §5.7).
inline constexpr double kGdnEps = 1e-8;

// Default frames per chunk of the chunked algorithm (the reference's `chunk_gdn_chunk_size`).
inline constexpr int64_t kDefaultGdnChunkFrames = 21;

// The algebraic key scale 1/sqrt(D*S) ("dim_spatial"), applied by the caller to ReLU(k) before
// RoPE, in both the main and the camera branch. Throws unless both arguments are positive.
double GdnKeyScale(int64_t head_dim, int64_t tokens_per_frame);

// ---------------------------------------------------------------------------------------------
// Inputs, states, outputs.

// Arguments of one main-branch scan (the reference's q, k, v, q_rot, k_rot, beta, decay).
struct GdnScanInputs {
  at::Tensor q;      // (B, H, Dk, N) ReLU(RMSNorm(q)), un-rotated: denominator stream
  at::Tensor k;      // (B, H, Dk, N) ReLU(RMSNorm(k)) * key scale, un-rotated: denominator stream
  at::Tensor v;      // (B, H, Dv, N)
  at::Tensor q_rot;  // (B, H, Dk, N) RoPE(q): numerator stream
  at::Tensor k_rot;  // (B, H, Dk, N) RoPE(k): numerator stream
  at::Tensor beta;   // (B, H, T, S) or (B, H, T)
  at::Tensor decay;  // (B, H, T)
};

// Arguments of one camera-branch (numerator-only) scan. q_rot/k_rot/v are the UCPE-transformed
// camera tensors; beta is already divided by the per-frame UCPE inflation factor.
struct CamScanInputs {
  at::Tensor q_rot;  // (B, H, Dk, N)
  at::Tensor k_rot;  // (B, H, Dk, N)
  at::Tensor v;      // (B, H, Dv, N)
  at::Tensor beta;   // (B, H, T, S) or (B, H, T)
  at::Tensor decay;  // (B, H, T)
};

// Recurrent state of the main branch after some frames. Both undefined = the zero state.
struct GdnState {
  at::Tensor kv;  // (B, H, Dv, Dk) float32
  at::Tensor z;   // (B, H, Dk, 1)  float32
  bool defined() const { return kv.defined() || z.defined(); }
};

// Numerator and denominator of one scan.
struct GdnComponents {
  at::Tensor num;  // (B, H, Dv, N) float32
  at::Tensor den;  // (B, H, 1, N)  float32
};

enum class GdnScanMethod {
  // The reference's chunked algorithm: per chunk of frames, the per-frame D x D transitions
  // W_t = gamma_t (I - K diag(beta) K^T) and inputs U_t = V diag(beta) K^T are built in parallel,
  // the D x D state is scanned sequentially through them (S_t = S_{t-1} W_t + U_t), and all
  // outputs of the chunk are read out with one batched matmul. Transient memory is
  // O(chunk_frames * D * max(D, S)) per (batch, head), independent of T. The transitions do not
  // depend on the direction: when a call runs both directions over frames that fit in one chunk
  // (GdnBidirectional with T <= chunk_frames, each chunk of GdnStreamChunk / GdnChunkCausal), they
  // are built once for both; otherwise each direction builds its own.
  kChunked,
  // The plain frame-by-frame recurrence in the spec's step form (decay, delta correction against
  // the S tokens of the frame, readout), one frame per step including its readout. The
  // independent reference for tests. (On CPU at the real shape, D=112, S=880, it is not slower:
  // 180 ms vs 280 ms for a 4-frame stream chunk of 20 heads on 2 cores; the chunked form exists
  // for its short sequential part on GPUs.)
  kRecurrent,
};

struct GdnScanOptions {
  GdnScanMethod method = GdnScanMethod::kChunked;
  int64_t chunk_frames = kDefaultGdnChunkFrames;  // kChunked only; must be >= 1
};

// ---------------------------------------------------------------------------------------------
// Main branch.

// Forward inclusive scan over all T frames of `in`, seeded from `initial` (undefined = zero
// state). If `final_state` is non-null it receives the state after the last frame (the state to
// carry into the next streaming chunk). Returns num (B, H, Dv, N) and den (B, H, 1, N).
GdnComponents GdnForwardScan(const GdnScanInputs& in, const GdnScanOptions& options = {},
                             const GdnState& initial = {}, GdnState* final_state = nullptr);

// Backward exclusive scan over the frames of `in`, in natural frame order: frame t's output uses
// frames t+1..T-1 only (the last frame's is zero), starting from the zero state. Equal to the
// reference's second call composed with the flip back (see FlipShiftForBackward/FlipFrames).
GdnComponents GdnBackwardScan(const GdnScanInputs& in, const GdnScanOptions& options = {});

// (fwd.num + bwd.num) / (fwd.den + bwd.den + eps), (B, H, Dv, N) float32.
at::Tensor GdnCombine(const GdnComponents& fwd, const GdnComponents& bwd, double eps = kGdnEps);

// The bidirectional main branch (`BidirectionalGDN`): forward inclusive + backward exclusive
// over the whole sequence, combined. (B, H, Dv, N) float32.
at::Tensor GdnBidirectional(const GdnScanInputs& in, const GdnScanOptions& options = {},
                            double eps = kGdnEps);

// The chunk-causal main branch (`ChunkCausalGDN`, spec §1.4 variants): the forward scan runs over
// the whole sequence, the backward scan restarts from zero inside every chunk. `chunk_sizes` are
// the AR chunk lengths in frames (e.g. {4, 3, 3, ...}); each >= 1, summing to T.
at::Tensor GdnChunkCausal(const GdnScanInputs& in, const std::vector<int64_t>& chunk_sizes,
                          const GdnScanOptions& options = {}, double eps = kGdnEps);

struct GdnStreamOutput {
  at::Tensor out;  // (B, H, Dv, N_chunk) float32: the chunk's combined output
  GdnState state;  // the forward state after the chunk's last frame
};

// One streaming chunk (spec §4.3): the forward scan is seeded from `carried` (the state after all
// previous chunks; undefined = first chunk), the backward scan is isolated inside this chunk.
// `in` holds only the chunk's frames (T = chunk length). Pure: `carried` is not modified; keep the
// returned state only from the pass that should advance the cache (the KV-save pass on the clean
// chunk). Chunk by chunk this reproduces GdnChunkCausal over the concatenated sequence.
GdnStreamOutput GdnStreamChunk(const GdnScanInputs& in, const GdnState& carried,
                               const GdnScanOptions& options = {}, double eps = kGdnEps);

// ---------------------------------------------------------------------------------------------
// Camera branch: numerator-only delta rule (no z, no division), spec §3.2 step 7.

// Forward inclusive scan, seeded from `initial_kv` ((B, H, Dv, Dk); undefined = zero). If
// `final_kv` is non-null it receives the state after the last frame. (B, H, Dv, N) float32.
at::Tensor CamForwardScan(const CamScanInputs& in, const GdnScanOptions& options = {},
                          const at::Tensor& initial_kv = {}, at::Tensor* final_kv = nullptr);

// Backward exclusive scan in natural frame order (zero state at the last frame).
at::Tensor CamBackwardScan(const CamScanInputs& in, const GdnScanOptions& options = {});

// Bidirectional camera scan: forward + backward, summed. (B, H, Dv, N) float32.
at::Tensor CamBidirectional(const CamScanInputs& in, const GdnScanOptions& options = {});

// Chunk-causal camera scan: global forward + backward isolated inside each chunk.
at::Tensor CamChunkCausal(const CamScanInputs& in, const std::vector<int64_t>& chunk_sizes,
                          const GdnScanOptions& options = {});

struct CamStreamOutput {
  at::Tensor out;    // (B, H, Dv, N_chunk) float32
  at::Tensor state;  // (B, H, Dv, Dk) float32, after the chunk's last frame
};

// One streaming chunk of the camera scan (same contract as GdnStreamChunk).
CamStreamOutput CamStreamChunk(const CamScanInputs& in, const at::Tensor& carried_kv,
                               const GdnScanOptions& options = {});

// ---------------------------------------------------------------------------------------------
// Helpers.

// Frames [t0, t1) of a scan's inputs (views where possible). 0 <= t0 < t1 <= T.
GdnScanInputs SliceFrames(const GdnScanInputs& in, int64_t t0, int64_t t1);
CamScanInputs SliceFrames(const CamScanInputs& in, int64_t t0, int64_t t1);

// The reference's backward-call arguments: q, q_rot reversed over frames; k, k_rot, v, beta
// "flip-and-shift"ed (reversed, shifted one frame, zero at the head); decay flip-and-shifted with
// 1 at the head. A forward scan on the result, passed through FlipFrames, equals the backward
// scan. Only needed to reproduce the reference's composition; the backward scans above work in
// natural order without copies.
GdnScanInputs FlipShiftForBackward(const GdnScanInputs& in);
CamScanInputs FlipShiftForBackward(const CamScanInputs& in);

// Reverses the frame order of a (B, H, D, T*S) tensor (tokens inside a frame keep their order).
at::Tensor FlipFrames(const at::Tensor& x, int64_t frames);

// Gates of a GDN block (the reference's `_compute_frame_gates`), computed in float32:
//   beta  = sigmoid(h W_beta^T + b_beta)                                  -> (B, H, T, S)
//   decay = exp(-exp(a_log) * softplus(mean_s(h) W_gate^T + b_gate + dt_bias)) -> (B, H, T)
// h: (B, N, C) the block's attention input, N = frames * tokens_per_frame; beta_weight and
// gate_weight (H, C); beta_bias, gate_bias, a_log (the checkpoint's `A_log`), dt_bias (H).
struct FrameGates {
  at::Tensor beta;   // (B, H, T, S) float32
  at::Tensor decay;  // (B, H, T)    float32
};
FrameGates ComputeFrameGates(const at::Tensor& h, int64_t frames, int64_t tokens_per_frame,
                             const at::Tensor& beta_weight, const at::Tensor& beta_bias,
                             const at::Tensor& gate_weight, const at::Tensor& gate_bias,
                             const at::Tensor& a_log, const at::Tensor& dt_bias);

}  // namespace wmserve::worker::sana

#endif  // WMSERVE_WORKER_MODELS_SANA_GDN_H_
