// The model interface every world model served by a worker implements.
//
// Torch-free on purpose: the rollout runner, the worker agent and the tests see only this
// header; tensors live behind it in worker/models/*.cc.
//
// A rollout runs four stages, and a model maps its own work onto them:
//
//   StartRollout            image encode   first image -> model state (warp: resized source
//                                           image + intrinsics; SANA-WM: VAE latent frame 0,
//                                           camera tensors, empty GDN/KV caches)
//   NextChunk, repeatedly   backbone       generate the next chunk (SANA-WM streaming: 4 Euler
//                                           steps + cache-writing pass over 3 latent frames)
//                           refiner        optional (SANA-WM: LTX-2 refiner block)
//                           decode         to uint8 RGB frames (SANA-WM: causal VAE decode)
//
// The model reports every denoise step / frame through RolloutControl, which is also where it
// learns that the rollout was cancelled: a model must check `cancelled()` at least once per step
// or frame and return a CANCELLED status promptly, so cancel latency is bounded by one step.
// Rollouts are deterministic for (inputs, seed) on the same device type.
#ifndef WMSERVE_WORKER_MODEL_H_
#define WMSERVE_WORKER_MODEL_H_

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "worker/media/rgb_image.h"

namespace wmserve::worker {

using media::RgbImage;

// One output frame's camera. `c2w` is a row-major 4x4 camera-to-world matrix in OpenCV axes
// (+x right, +y down, +z forward), metric. Intrinsics are in *source image* pixels.
struct CameraFrame {
  std::array<double, 16> c2w{};
  double fx = 0, fy = 0, cx = 0, cy = 0;
};

struct RolloutSpec {
  RgbImage image;                    // decoded first image, at its source resolution
  std::vector<CameraFrame> cameras;  // exactly one per output frame; validated by the server
  int width = 0;                     // output resolution (even, > 0)
  int height = 0;
  double fps = 16;
  uint64_t seed = 0;
  std::map<std::string, std::string> options;  // model_options from the request
};

// FINAL: the requested video. PREVIEW: an early, cheaper look at frames a later FINAL chunk will
// carry (sana-wm: Stage-1 latents decoded before the refiner), encoded as its own video stream.
enum class ChunkKind { kFinal, kPreview };

// A contiguous run of output frames, ready for the video encoder.
struct FrameChunk {
  ChunkKind kind = ChunkKind::kFinal;
  int first_frame = 0;  // within its kind's video
  int frame_count = 0;
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;  // frame_count * height * width * 3, frame-major
};

enum class ModelStage { kImageEncode, kBackbone, kRefiner, kDecode };
const char* ModelStageName(ModelStage stage);

// The runner's side of a rollout, handed to the model. Thread-safe: a model may call it from its
// own pipeline threads (sana-wm runs Stage-1 and refine + decode on separate threads) and from a
// co-batch running on another rollout's thread.
class RolloutControl {
 public:
  virtual ~RolloutControl() = default;
  // True once the rollout should stop (client cancel, disconnect, deadline, shutdown).
  virtual bool cancelled() const = 0;
  // Progress within a stage; `total_steps` may be 0 if unknown. A cheap call.
  virtual void OnStep(ModelStage stage, int step, int total_steps) = 0;
  // Wall time spent in a stage, accumulated into the rollout's per-stage timings.
  virtual void AddStageTime(ModelStage stage, absl::Duration elapsed) = 0;
};

// Adds the wall time of a scope to one stage of the rollout's timings (RAII), e.g.
//   { StageTimer t(control, ModelStage::kDecode); ... }
class StageTimer {
 public:
  StageTimer(RolloutControl& control, ModelStage stage)
      : control_(control), stage_(stage), start_(absl::Now()) {}
  ~StageTimer() { control_.AddStageTime(stage_, absl::Now() - start_); }
  StageTimer(const StageTimer&) = delete;
  StageTimer& operator=(const StageTimer&) = delete;

 private:
  RolloutControl& control_;
  ModelStage stage_;
  absl::Time start_;
};

// One rollout's model-side state. Not thread-safe: used by one rollout thread at a time.
class ModelRollout {
 public:
  virtual ~ModelRollout() = default;
  // Runs backbone -> (refiner) -> decode for the next chunk. Returns std::nullopt once all
  // frames have been produced. Errors: CANCELLED when control.cancelled() was seen,
  // INVALID_ARGUMENT for inputs the model cannot use, INTERNAL / RESOURCE_EXHAUSTED otherwise.
  virtual absl::StatusOr<std::optional<FrameChunk>> NextChunk(RolloutControl& control) = 0;
  // FINAL frames the rollout produces; -1 = one per camera of the spec. (sana-wm with the
  // refiner drops the conditioning frame: 961 cameras -> 960 frames.)
  virtual int output_frames() const { return -1; }
  // True if NextChunk also returns PREVIEW chunks, each ahead of the FINAL chunk with the same
  // frames.
  virtual bool emits_previews() const { return false; }
};

struct ModelDescriptor {
  std::string name;    // the name clients put in RolloutRequest.model
  std::string preset;  // model-specific preset, "" if none
  int native_width = 1280;
  int native_height = 704;
  // Device memory held by the weights, bytes (0 = none).
  uint64_t weights_bytes = 0;
  // Rough per-rollout device memory, bytes, for placement (0 = negligible).
  uint64_t rollout_state_bytes = 0;
  // Rollouts the model runs in one batched forward when they are compatible (co-batching);
  // 1 = each rollout runs alone.
  int max_batch = 1;
};

class Model {
 public:
  virtual ~Model() = default;
  virtual const ModelDescriptor& descriptor() const = 0;
  // Runs one small rollout end to end so the first real request pays no lazy-init cost.
  virtual absl::Status WarmUp() = 0;
  // Validates `spec` against model-specific rules (frame counts, options) and runs the image
  // encode stage. INVALID_ARGUMENT names the offending field.
  virtual absl::StatusOr<std::unique_ptr<ModelRollout>> StartRollout(
      const RolloutSpec& spec, RolloutControl& control) = 0;
};

}  // namespace wmserve::worker

#endif  // WMSERVE_WORKER_MODEL_H_
