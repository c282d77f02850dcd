// File: the Stage-1 rollouts of SANA-WM (spec §4.1, §4.3) on top of SanaTransformer.
//
// Depends on LibTorch and the C++ standard library only. Errors: InvalidInputError for inputs of
// the wrong shape (naming the field), RolloutCancelled when the step callback asks to stop.
//
//  * StreamingRollout (distilled streaming, `SelfForcingFlowEulerCamCtrl`): chunk plan 4, 3, 3,
//    ... latent frames (StreamingChunkPlan); per chunk 4 Euler steps at sigma 1, .96, .889, .727
//    -> 0 with the cache read-only, then one KV-save forward of the clean chunk at t = 0, the
//    only pass that writes the streaming cache (SanaTransformer::ForwardChunk). No CFG. The
//    forward uses StreamingForwardOptions() (the released streaming code path's semantics).
//  * BidirectionalRollout (`LTXFlowEuler`): FlowMatchSchedule(steps, 9.8), all frames at once,
//    CFG on the text with the model input batched [uncond, cond] (camera duplicated); with
//    cfg_scale == 1 or no uncond text, a single conditional forward per step. Default
//    SanaForwardOptions (the released bidirectional path).
//
// Initial noise: z ~ N(0, I) (float32) of shape (1, C, T, H, W) drawn in one call from a private
// generator seeded with `seed` on the model's device (deterministic for a seed and device type);
// then z[:, :, 0] = first_latent. Streaming chunks take their noise from z. Frame 0 (the
// condition frame) has timestep 0 and is restored to first_latent after every Euler step.
// Latents are kept in float32; the model casts them to its dtype.
//
// Step callback: called before every denoiser forward with (step, total_steps). Streaming:
// step 0..3 are the denoising passes of the current chunk and step 4 the KV-save pass
// (total_steps = 5). Bidirectional: the step of the rollout (total_steps = steps). Returning
// false throws RolloutCancelled before that forward runs.
#ifndef WMSERVE_WORKER_MODELS_SANA_ROLLOUT_H_
#define WMSERVE_WORKER_MODELS_SANA_ROLLOUT_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "worker/models/sana/errors.h"
#include "worker/models/sana/sampler.h"
#include "worker/models/sana/transformer.h"

namespace wmserve::worker::sana {

struct RolloutInputs {
  at::Tensor first_latent;          // (1, C, 1, H, W), normalised latent of the first image
  at::Tensor camera_conditions;     // (1, T, 20) for all latent frames (camera.h PrepareCamera)
  at::Tensor chunk_plucker;         // (1, 48, T, H, W)
  at::Tensor text, text_mask;       // (1, 1, L, Ccap), (1, L) int64 1=keep
  at::Tensor uncond_text, uncond_mask;  // for CFG (bidirectional); may be undefined for streaming
  uint64_t seed = 0;
};

// Called before every denoiser forward: (step index within the chunk or rollout, total steps).
// Return false to cancel: the rollout throws RolloutCancelled.
using StepCallback = std::function<bool(int step, int total_steps)>;

class StreamingRollout {  // distilled streaming: chunk plan 4,3,3,...; sigma [1,.96,.889,.727,0]; no CFG
 public:
  StreamingRollout(const SanaTransformer& model, RolloutInputs inputs);
  int num_chunks() const;
  FrameRange chunk(int i) const;  // latent frames of chunk i (sampler.h FrameRange)
  bool done() const { return next_chunk_ >= num_chunks(); }
  // Denoises the next chunk (4 Euler steps, read-only cache) then runs the KV-save pass at t=0;
  // returns its clean latents (1, C, t, H, W) (chunk 0 includes the condition frame 0).
  // Throws InvalidInputError once every chunk is done.
  at::Tensor NextChunk(const StepCallback& on_step);
  int64_t cache_bytes() const;  // constant in rollout length after warm-up

  // --- co-batching ---
  // The batch shape of the next chunk (transformer.h). Rollouts of one model whose shapes are
  // equal can run their next chunk together in NextChunkBatch; precondition !done().
  StreamingBatchShape NextChunkShape() const;
  struct ChunkOutcome {
    at::Tensor latents;      // (1, C, t, H, W) as NextChunk returns; undefined if cancelled
    bool cancelled = false;  // its step callback returned false: nothing of the chunk committed
    int cancelled_before = -1;  // the forward (0..4) it stopped before
  };
  // The next chunk of every rollout in one batched forward per step (4 Euler steps + the KV-save
  // pass; rows are rollouts). Before every forward each member's callback runs; a member whose
  // callback returns false leaves the batch at once (its cache and chunk counter untouched) and
  // the others go on, so a cancel costs the canceller at most one step. The rollouts must share
  // the model and have equal NextChunkShape() (InvalidInputError otherwise). Each member's
  // latents equal its NextChunk() up to floating-point reassociation.
  static std::vector<ChunkOutcome> NextChunkBatch(const std::vector<StreamingRollout*>& rollouts,
                                                  const std::vector<StepCallback>& on_step);

  // Chunks produced so far, and the streaming cache (read-only; for tests and diagnostics).
  int chunks_done() const { return next_chunk_; }
  const SanaStreamingCache& cache() const { return cache_; }

 private:
  const SanaTransformer& model_;
  RolloutInputs in_;
  int64_t frames_ = 0;
  std::vector<FrameRange> plan_;
  SigmaSchedule schedule_;
  SanaForwardOptions options_;
  at::Tensor noise_;  // (1, C, T, H, W) float32, frame 0 = first_latent
  SanaStreamingCache cache_;
  int next_chunk_ = 0;
};

class BidirectionalRollout {  // 60-step shifted flow-matching Euler, shift 9.8, CFG 5 on text
 public:
  BidirectionalRollout(const SanaTransformer& model, RolloutInputs inputs, int steps = 60,
                       double cfg_scale = 5.0);
  at::Tensor Run(const StepCallback& on_step);  // (1, C, T, H, W)

 private:
  const SanaTransformer& model_;
  RolloutInputs in_;
  int64_t frames_ = 0;
  int steps_;
  double cfg_scale_;
  SigmaSchedule schedule_;
};

// The initial noise both rollouts start from (see the file comment): (1, C, frames, H, W)
// float32 on `device`, frame 0 replaced by first_latent.
at::Tensor RolloutInitialNoise(const at::Tensor& first_latent, int64_t frames, uint64_t seed,
                               c10::Device device);

}  // namespace wmserve::worker::sana

#endif  // WMSERVE_WORKER_MODELS_SANA_ROLLOUT_H_
