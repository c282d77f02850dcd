// File: the SANA-WM pipeline after Stage-1 for one rollout: Stage-1 latent chunks -> LTX-2
// refiner block (optional) -> causal streaming VAE decode -> uint8 RGB frames, with the stages
// overlapped (sana-wm-spec §5.3; ltx2-spec §1.8, §3.3).
//
// Depends on LibTorch and the C++ standard library only (builds in the model-only build).
//
// Chunks. The latent source yields Stage-1 chunks of 1 + 3, then 3 latent frames (the streaming
// plan; sana-wm-spec §4.3) — the refiner's blocks line up with them: chunk 0 holds the clean
// conditioning frame (the refiner's sink, captured once and never refined) and block [1, 4);
// chunk k >= 1 is block [3k + 1, 3k + 4). Each chunk decodes, with one CausalStreamingDecoder per
// video, to 1 + 24 then 24 pixel frames. With the refiner the sink's pixel frame is dropped
// (961 poses -> 960 frames, sana-wm-spec §5.2 step 5); without it every frame is kept.
//
// Outputs, in order: per chunk its PREVIEW (the un-refined Stage-1 latents decoded; only with
// `preview`) then its FINAL (refined, or Stage-1 without the refiner). Each kind is its own video
// with its own decoder cache and frame numbering.
//
// Overlap. With `overlap` the source runs on a producer thread and refine + decode on a
// post-processing thread, each on its own CUDA stream on a GPU, so chunk N is refined and decoded
// while chunk N + 1 is generated; queues of one chunk between the stages bound the memory. The
// producer synchronises its stream before handing a chunk over, and decoded frames are copied to
// the host before they leave the post thread, so no tensor is read on a stream it was not
// finished on. Without `overlap` Next() runs the stages inline (for tests and benchmarks).
//
// Cancellation and errors: the step callbacks run before every Stage-1 / refiner forward;
// returning false throws RolloutCancelled in that stage, which Next() rethrows (as any other
// exception of a stage). The destructor stops the threads.
#ifndef WMSERVE_WORKER_MODELS_PIPELINE_STREAMING_PIPELINE_H_
#define WMSERVE_WORKER_MODELS_PIPELINE_STREAMING_PIPELINE_H_

#include <ATen/core/Tensor.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "worker/models/ltx2/ltx2_transformer.h"
#include "worker/models/ltx2/refiner.h"
#include "worker/models/ltx2/vae.h"

namespace wmserve::worker::pipeline {

enum class OutputKind { kFinal, kPreview };
enum class Stage { kBackbone, kRefiner, kDecode };

struct PipelineOutput {
  OutputKind kind = OutputKind::kFinal;
  int64_t first_frame = 0;  // within its kind's video
  at::Tensor frames;        // (T, H, W, 3) uint8, contiguous, on the host
};

// One chunk from the latent source: Stage-1 latents (1, C, t, h, w), normalised, and, when the
// source refined them itself (the bidirectional mode refines the whole clip offline), the refined
// latents of the same frames.
struct LatentChunk {
  at::Tensor stage1;
  at::Tensor refined;  // undefined: refine in the pipeline (streaming) if refining at all
};
// Returns the next chunk, or nullopt when the rollout has none left. Runs on the producer thread.
using LatentSource = std::function<std::optional<LatentChunk>()>;

struct PipelineModels {
  std::shared_ptr<const ltx2::VideoVae> vae;
  // The refiner and its prompt context; null when the worker runs without a refiner.
  std::shared_ptr<const ltx2::Ltx2Transformer> refiner;
  ltx2::Ltx2TextContext refiner_text;
  ltx2::RefinerOptions refiner_options;
};

struct PipelineOptions {
  // The FINAL video is refined: chunks the source did not refine are refined here (streaming
  // blocks); chunks it did (LatentChunk::refined) are only decoded. Needs models.refiner.
  bool refine = true;
  bool preview = false;  // needs refine (without it the preview would equal the final video)
  bool overlap = true;
};

struct PipelineCallbacks {
  // Before every refiner forward (RefinerChunkRunner's step index); false cancels.
  std::function<bool(int step, int total_steps)> on_refiner_step;
  // Wall time of a stage for one chunk (from the thread that ran it).
  std::function<void(Stage stage, double seconds)> on_stage_time;
};

class StreamingPipeline {
 public:
  // Throws InvalidInputError for options the models cannot serve (refine without a refiner,
  // preview without refine, a refiner block size other than 3).
  StreamingPipeline(PipelineModels models, LatentSource source, PipelineOptions options,
                    PipelineCallbacks callbacks);
  ~StreamingPipeline();
  StreamingPipeline(const StreamingPipeline&) = delete;
  StreamingPipeline& operator=(const StreamingPipeline&) = delete;

  // The next output (see the file comment for the order); nullopt once the source is exhausted
  // and everything is decoded. Rethrows the first exception any stage threw.
  std::optional<PipelineOutput> Next();

  // FINAL frames for a rollout of `stage1_latent_frames` latent frames (1 + 3k): 8(T-1) + 1,
  // minus the sink frame when refining.
  static int64_t FinalFrames(int64_t stage1_latent_frames, bool refine);

  // Device bytes of this rollout's decoder caches and refiner state. Reads state the post
  // thread writes: call it between chunks (after Next() returned a FINAL output, with no other
  // Next() running) or without overlap.
  int64_t StateBytes() const;

 private:
  // Refines (if needed) and decodes one chunk into `out` (PREVIEW first).
  void PostProcess(const LatentChunk& chunk, std::deque<PipelineOutput>& out);
  void ProducerLoop();
  void PostLoop();
  void Fail(std::exception_ptr error);

  PipelineModels models_;
  LatentSource source_;
  const PipelineOptions options_;
  PipelineCallbacks callbacks_;

  ltx2::CausalStreamingDecoder final_decoder_;
  std::unique_ptr<ltx2::CausalStreamingDecoder> preview_decoder_;
  std::unique_ptr<ltx2::RefinerChunkRunner> refiner_runner_;
  int64_t chunks_done_ = 0;
  int64_t final_frames_ = 0, preview_frames_ = 0;

  // Overlapped mode: producer -> latents_ -> post thread -> outputs_ -> Next().
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<LatentChunk> latents_;
  std::deque<PipelineOutput> outputs_;
  bool source_done_ = false, post_done_ = false, stop_ = false;
  std::exception_ptr error_;
  std::thread producer_, post_;
};

}  // namespace wmserve::worker::pipeline

#endif  // WMSERVE_WORKER_MODELS_PIPELINE_STREAMING_PIPELINE_H_
