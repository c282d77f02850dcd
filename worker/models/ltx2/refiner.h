// File: SANA-WM's Stage-2 refiner on the LTX-2.0 video transformer (spec ltx2-spec.md §3,
// sana-wm-spec.md §5; S-REF `DiffusersLTX2Refiner.refine_latents`, `RefinerChunkRunner`):
//   * RefineOffline — the "sink-bidirectional" mode (block_size=None): frame 0 is a clean sink
//     at timestep 0, every other frame is re-noised once to sigma_0 and refined by 3 Euler steps
//     in one sequence (sink queries see the sink only, current queries see everything);
//   * RefinerChunkRunner — the streaming chunk-causal mode: the sink's pre-RoPE K/V are captured
//     once; then each block of `block_size` frames is re-noised and refined by 3 Euler steps whose
//     queries attend to [sink re-RoPE'd just before the history, post-RoPE history K/V, the
//     block]; a 4th, sigma = 0 "capture" forward of the refined block appends its post-RoPE K/V
//     to the history, which is trimmed to kv_max_frames - sink_size frames.
//
// Depends on LibTorch and the C++ standard library only.
//
// Arithmetic (golden README §5.5): sigmas are float32; x0 = x - sigma * v and the offline update
// x + (sigma_next - sigma) * (x - x0) / sigma run in float32; the streaming update
// r x + (1 - r) x0 takes r = sigma_next / sigma in double. Latents are kept in the transformer's
// dtype between steps (the reference casts after every update), so a bf16 refiner rounds them to
// bf16 exactly where the reference does. Inputs are moved to the transformer's device and dtype;
// results are in that dtype on that device.
//
// Step callback: called before every transformer forward with the step index — 0..steps-1 for
// the Euler forwards, `steps` (3) for a block's capture forward, 0 for the sink capture. Returning
// false throws RolloutCancelled before that forward, so a cancel takes effect within one step.
// A cancelled RefinerChunkRunner refuses further work (RolloutCancelled again).
//
// Errors: ConfigError (invalid RefinerOptions), InvalidInputError (wrong shapes, channel counts,
// frame counts, non-finite latents or noise, calls out of order), RolloutCancelled.
#ifndef WMSERVE_WORKER_MODELS_LTX2_REFINER_H_
#define WMSERVE_WORKER_MODELS_LTX2_REFINER_H_

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "worker/models/ltx2/ltx2_transformer.h"
#include "worker/models/ltx2/refiner_config.h"

namespace wmserve::worker::ltx2 {

// Called before every transformer forward (see the file comment); return false to cancel.
using RefinerStepCallback = std::function<bool(int step)>;

// Receives the per-step tensors, named like the golden files: offline "step.{k}.x_t"
// (B, C, T - sink, H, W) and "step.{k}.x0" (B, N_current, C) tokens; streaming "step{k}.x_t",
// "step{k}.x0" (B, C, n, H, W), "capture.layer{l}.k_post_rope" / ".v" (B, n*H*W, D) (views of
// the runner's workspace, valid during the call only). Clone to keep.
using RefinerTap = std::function<void(const std::string& name, const at::Tensor& value)>;

// --- flow-matching arithmetic (spec §3.1; used by both modes, exposed for invariant tests) ----

// x0 = x - sigma * v in float32 (S-REF `_predict_current_x0`, `_predict_x0_active_block`).
at::Tensor X0FromVelocity(const at::Tensor& x, const at::Tensor& velocity, float sigma);
// The offline (velocity) form: x + (sigma_next - sigma) * (x - x0) / sigma, float32, with
// sigma_next - sigma formed in float32.
at::Tensor EulerStepVelocityForm(const at::Tensor& x, const at::Tensor& x0, float sigma,
                                 float sigma_next);
// The streaming (ratio) form: r x + (1 - r) x0, r = sigma_next / sigma in double, float32
// tensors; x0 itself when sigma <= 1e-6.
at::Tensor EulerStepRatioForm(const at::Tensor& x, const at::Tensor& x0, float sigma,
                              float sigma_next);
// Re-noising x = (1 - sigma) z + sigma eps in float32.
at::Tensor Renoise(const at::Tensor& z, const at::Tensor& eps, float sigma);

// --- offline sink-bidirectional mode (spec §3.2) ---------------------------------------------

// z: (B, C, T, H, W) normalised Stage-1 latents, frames [0, sink_size) the sink;
// eps: (B, C, T - sink_size, H, W) the noise of the current frames; text: the prompt's context
// (Ltx2Transformer::PrepareText, batch B). Returns the refined latents (B, C, T, H, W) with the
// sink frames unchanged. Uses options.sigmas, sink_size and fps (block_size / kv_max_frames are
// streaming parameters).
at::Tensor RefineOffline(const Ltx2Transformer& model, const at::Tensor& z, const at::Tensor& eps,
                         const Ltx2TextContext& text, const RefinerOptions& options,
                         const RefinerStepCallback& on_step = {}, const RefinerTap& tap = {});
// The same with eps drawn in one call from a generator seeded with options.seed on the model's
// device, in the model's dtype (the reference's single draw; deterministic per seed and device
// type, not bitwise the reference's CUDA stream).
at::Tensor RefineOffline(const Ltx2Transformer& model, const at::Tensor& z,
                         const Ltx2TextContext& text, const RefinerOptions& options,
                         const RefinerStepCallback& on_step = {});

// --- streaming chunk-causal mode (spec §3.3) -------------------------------------------------

// Per-rollout streaming state over a shared transformer (weights loaded once per worker; any
// number of runners may share them, one runner per rollout, not thread-safe itself).
//
// State: the sink's pre-RoPE K and V per layer, and per layer one preallocated K/V workspace of
// (sink_size + history cap + block_size) frames laid out [sink | history | block]. Each block
// re-RoPEs the sink K into the sink rows, each forward writes its block K/V after the history and
// attends over the filled rows; after the capture forward the block's K/V already follow the
// history, so trimming to the cap moves the kept frames forward once per block (no per-step
// concatenation, no growth).
class RefinerChunkRunner {
 public:
  // Validates the options (ConfigError); text must be the prompt's context (batch B).
  RefinerChunkRunner(std::shared_ptr<const Ltx2Transformer> model, Ltx2TextContext text,
                     RefinerOptions options);

  // Captures the sink once, before the first block: z_sink (B, C, sink_size, H, W), a sigma = 0
  // forward at frame positions [0, sink_size) with no prefix, keeping each layer's K after norm_k
  // and before RoPE, and V. The sink is never refined. Calls on_step(0) first.
  void CaptureSink(const at::Tensor& z_sink, const RefinerStepCallback& on_step = {});

  // Refines the next block: z_block (B, C, n, H, W) clean Stage-1 latents of frames
  // [block_start, block_start + n), block_start = sink_size + frames refined so far, with
  // 1 <= n <= block_size (a shorter block only as the last one). Draws eps for the block from the
  // runner's generator (seeded with options.seed, one draw per block in block order).
  at::Tensor RefineBlock(const at::Tensor& z_block, const RefinerStepCallback& on_step = {},
                         const RefinerTap& tap = {});
  // The same with the block's noise given: eps of z_block's shape.
  at::Tensor RefineBlock(const at::Tensor& z_block, const at::Tensor& eps,
                         const RefinerStepCallback& on_step = {}, const RefinerTap& tap = {});

  const RefinerOptions& options() const { return options_; }
  bool sink_captured() const { return !sink_kv_.empty(); }
  // Frames of post-RoPE history K/V held now: min(frames refined so far, kv_max_frames -
  // sink_size) (spec invariant 21).
  int64_t history_frames() const { return history_frames_; }
  // Frames refined so far (excluding the sink); the next block starts at sink_size + this.
  int64_t frames_refined() const { return frames_refined_; }
  int64_t next_block_start() const { return options_.sink_size + frames_refined_; }
  // The sink's RoPE frame position for the next block: block_start - history_frames - sink_size.
  int64_t next_sink_rope_offset() const { return next_block_start() - history_frames_ - options_.sink_size; }

  // Bytes of the live history K/V (history_frames x tokens per frame x D x 2 x layers x element
  // size); constant once the history is full.
  int64_t HistoryBytes() const;
  // Bytes this runner holds on the device: the workspaces plus the sink's pre-RoPE K/V.
  int64_t StateBytes() const;

  // Per layer, the sink's pre-RoPE K and V (B, sink_size*H*W, D).
  const std::vector<Ltx2LayerKv>& sink_kv() const { return sink_kv_; }
  // Per layer, views of the live history K (post-RoPE) and V (B, history_frames*H*W, D).
  std::vector<Ltx2LayerKv> History() const;

 private:
  void Step(const RefinerStepCallback& on_step, int step);
  void CheckUsable(const char* where) const;
  // Everything about z_block a block needs (shape against the sink, order, finite values).
  void CheckBlock(const char* where, const at::Tensor& z_block) const;
  at::Tensor RefineBlockImpl(const at::Tensor& z_block, const at::Tensor& eps,
                             const RefinerStepCallback& on_step, const RefinerTap& tap);

  std::shared_ptr<const Ltx2Transformer> model_;
  Ltx2TextContext text_;
  RefinerOptions options_;
  at::Generator generator_;
  int64_t batch_ = 0, height_ = 0, width_ = 0, tokens_per_frame_ = 0;
  std::vector<Ltx2LayerKv> sink_kv_;    // pre-RoPE K, V of the sink
  std::vector<Ltx2LayerKv> workspace_;  // [sink | history | block] per layer
  int64_t history_frames_ = 0;
  int64_t frames_refined_ = 0;
  int64_t blocks_done_ = 0;
  bool short_block_done_ = false;  // a block shorter than block_size ends the stream
  bool cancelled_ = false;
};

}  // namespace wmserve::worker::ltx2

#endif  // WMSERVE_WORKER_MODELS_LTX2_REFINER_H_
