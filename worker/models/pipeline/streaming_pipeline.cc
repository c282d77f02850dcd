// The SANA-WM post-Stage-1 pipeline of one rollout (see streaming_pipeline.h).
#include "worker/models/pipeline/streaming_pipeline.h"

#include <ATen/ops/cat.h>
#include <c10/core/Device.h>
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <string>
#include <utility>

#include "worker/models/ltx2/vae_pixels.h"
#include "worker/models/sana/errors.h"

#if WMSERVE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace wmserve::worker::pipeline {
namespace {

using Clock = std::chrono::steady_clock;

// The refiner's blocks must line up with Stage-1's chunks (3 latent frames after chunk 0's
// conditioning frame): one block per chunk.
constexpr int kChunkFrames = 3;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// Waits for the work queued on the current stream of `device` (a no-op on the CPU): the stage
// timings measure the device's work, and a chunk handed to another thread is complete.
void Synchronize(c10::Device device) {
#if WMSERVE_WITH_CUDA
  if (device.is_cuda()) at::cuda::getCurrentCUDAStream(device.index()).synchronize();
#else
  (void)device;
#endif
}

// Runs the calling thread's work on its own CUDA stream (sana-wm-spec §5.3: Stage-1 and the
// refiner + VAE overlap on separate streams). Nothing on the CPU.
class SideStream {
 public:
  explicit SideStream(c10::Device device) {
#if WMSERVE_WITH_CUDA
    if (device.is_cuda()) {
      guard_ = std::make_unique<c10::cuda::CUDAStreamGuard>(
          c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index()));
    }
#else
    (void)device;
#endif
  }

 private:
#if WMSERVE_WITH_CUDA
  std::unique_ptr<c10::cuda::CUDAStreamGuard> guard_;
#endif
};

[[noreturn]] void Bad(const std::string& message) {
  throw sana::InvalidInputError("StreamingPipeline: " + message);
}

}  // namespace

int64_t StreamingPipeline::FinalFrames(int64_t stage1_latent_frames, bool refine) {
  const int64_t frames = 8 * (stage1_latent_frames - 1) + 1;
  return refine ? frames - 1 : frames;
}

StreamingPipeline::StreamingPipeline(PipelineModels models, LatentSource source,
                                     PipelineOptions options, PipelineCallbacks callbacks)
    : models_(std::move(models)),
      source_(std::move(source)),
      options_(options),
      callbacks_(std::move(callbacks)),
      final_decoder_(models_.vae) {
  if (!models_.vae) Bad("no VAE");
  if (options_.refine && !models_.refiner) Bad("refine=on, but this worker has no refiner");
  if (options_.preview && !options_.refine) {
    Bad("preview=on needs refine=on (without the refiner the preview is the final video)");
  }
  if (options_.refine) {
    if (models_.refiner_options.block_size != kChunkFrames || models_.refiner_options.sink_size != 1) {
      Bad("the refiner's blocks (" + std::to_string(models_.refiner_options.block_size) +
          " frames, sink " + std::to_string(models_.refiner_options.sink_size) +
          ") must match Stage-1's chunks (3 frames, sink 1)");
    }
  }
  if (options_.preview) preview_decoder_ = std::make_unique<ltx2::CausalStreamingDecoder>(models_.vae);
  if (options_.overlap) {
    producer_ = std::thread([this] { ProducerLoop(); });
    post_ = std::thread([this] { PostLoop(); });
  }
}

StreamingPipeline::~StreamingPipeline() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (producer_.joinable()) producer_.join();
  if (post_.joinable()) post_.join();
}

void StreamingPipeline::Fail(std::exception_ptr error) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!error_) error_ = error;
  cv_.notify_all();
}

void StreamingPipeline::PostProcess(const LatentChunk& chunk, std::deque<PipelineOutput>& out) {
  const bool first = chunks_done_ == 0;
  if (preview_decoder_) {
    const auto start = Clock::now();
    const at::Tensor pixels = preview_decoder_->DecodeChunk(chunk.stage1);
    PipelineOutput o{OutputKind::kPreview, preview_frames_, ltx2::ToUint8Frames(pixels).cpu()};
    preview_frames_ += o.frames.size(0);
    if (callbacks_.on_stage_time) callbacks_.on_stage_time(Stage::kDecode, Seconds(start));
    out.push_back(std::move(o));
  }

  at::Tensor latents = chunk.stage1;
  if (chunk.refined.defined()) {
    latents = chunk.refined;
  } else if (options_.refine) {
    const auto start = Clock::now();
    if (!refiner_runner_) {
      refiner_runner_ = std::make_unique<ltx2::RefinerChunkRunner>(
          models_.refiner, models_.refiner_text, models_.refiner_options);
    }
    const int total = models_.refiner_options.steps() + 1;
    const ltx2::RefinerStepCallback on_step = [this, total](int step) {
      return !callbacks_.on_refiner_step || callbacks_.on_refiner_step(step, total);
    };
    if (first) {
      if (chunk.stage1.size(2) != 1 + kChunkFrames) {
        Bad("chunk 0 has " + std::to_string(chunk.stage1.size(2)) + " latent frames, expected 4");
      }
      const at::Tensor sink = chunk.stage1.narrow(2, 0, 1);
      refiner_runner_->CaptureSink(sink, on_step);
      const at::Tensor block = refiner_runner_->RefineBlock(chunk.stage1.narrow(2, 1, kChunkFrames), on_step);
      latents = at::cat({sink.to(block.scalar_type()), block}, 2);
    } else {
      latents = refiner_runner_->RefineBlock(chunk.stage1, on_step);
    }
    Synchronize(models_.refiner->device());
    if (callbacks_.on_stage_time) callbacks_.on_stage_time(Stage::kRefiner, Seconds(start));
  }

  const auto start = Clock::now();
  at::Tensor pixels = final_decoder_.DecodeChunk(latents);
  // With the refiner the sink's frame is not part of the video (sana-wm-spec §5.2 step 5).
  const bool refined = options_.refine || chunk.refined.defined();
  if (first && refined) pixels = pixels.narrow(2, 1, pixels.size(2) - 1);
  PipelineOutput o{OutputKind::kFinal, final_frames_, ltx2::ToUint8Frames(pixels).cpu()};
  final_frames_ += o.frames.size(0);
  if (callbacks_.on_stage_time) callbacks_.on_stage_time(Stage::kDecode, Seconds(start));
  out.push_back(std::move(o));
  ++chunks_done_;
}

void StreamingPipeline::ProducerLoop() {
  c10::InferenceMode inference;
  SideStream stream(models_.vae->device());
  try {
    for (;;) {
      {
        // One chunk ahead at most: Stage-1 may run while the previous chunk is post-processed.
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || error_ || latents_.empty(); });
        if (stop_ || error_) return;
      }
      std::optional<LatentChunk> chunk = source_();
      if (chunk) {
        Synchronize(chunk->stage1.device());
      }
      std::lock_guard<std::mutex> lock(mu_);
      if (!chunk) {
        source_done_ = true;
        cv_.notify_all();
        return;
      }
      latents_.push_back(*std::move(chunk));
      cv_.notify_all();
    }
  } catch (...) {
    Fail(std::current_exception());
  }
}

void StreamingPipeline::PostLoop() {
  c10::InferenceMode inference;
  SideStream stream(models_.vae->device());
  try {
    for (;;) {
      LatentChunk chunk;
      {
        // Decoded outputs wait for Next() at most two chunks deep (frames are host memory).
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] {
          return stop_ || error_ || (!latents_.empty() && outputs_.size() < 2) ||
                 (latents_.empty() && source_done_);
        });
        if (stop_ || error_) return;
        if (latents_.empty()) {
          post_done_ = true;
          cv_.notify_all();
          return;
        }
        chunk = std::move(latents_.front());
        latents_.pop_front();
        cv_.notify_all();  // the producer may start the next chunk
      }
      std::deque<PipelineOutput> out;
      PostProcess(chunk, out);
      std::lock_guard<std::mutex> lock(mu_);
      for (PipelineOutput& o : out) outputs_.push_back(std::move(o));
      cv_.notify_all();
    }
  } catch (...) {
    Fail(std::current_exception());
  }
}

std::optional<PipelineOutput> StreamingPipeline::Next() {
  if (!options_.overlap) {
    if (outputs_.empty()) {
      std::optional<LatentChunk> chunk = source_();
      if (!chunk) return std::nullopt;
      PostProcess(*chunk, outputs_);
    }
    PipelineOutput o = std::move(outputs_.front());
    outputs_.pop_front();
    return o;
  }
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return error_ || !outputs_.empty() || post_done_; });
  if (!outputs_.empty()) {
    PipelineOutput o = std::move(outputs_.front());
    outputs_.pop_front();
    cv_.notify_all();
    return o;
  }
  if (error_) std::rethrow_exception(error_);
  return std::nullopt;
}

int64_t StreamingPipeline::StateBytes() const {
  int64_t bytes = final_decoder_.CacheBytes();
  if (preview_decoder_) bytes += preview_decoder_->CacheBytes();
  if (refiner_runner_) bytes += refiner_runner_->StateBytes();
  return bytes;
}

}  // namespace wmserve::worker::pipeline
