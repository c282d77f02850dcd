// Runs one rollout on a worker: image decode -> model stages chunk by chunk -> H.264/fMP4
// encoding on a separate encoder thread -> events out, each chunk as soon as it is encoded.
//
//   rollout thread:  DecodeImage, StartRollout, NextChunk, NextChunk, ...   (model stages)
//                         |                         | bounded hand-off (2 chunks)
//   encoder thread:       +---- StreamInit          +-> EncodeSegment -> VideoChunk event
//
// The model is asked to stop through RolloutControl::cancelled(), which it checks every step or
// frame; the encoder stops between segments. Torch-free.
#ifndef WMSERVE_WORKER_ROLLOUT_RUNNER_H_
#define WMSERVE_WORKER_ROLLOUT_RUNNER_H_

#include <atomic>
#include <string>

#include "server/metrics.h"
#include "worker/device_memory.h"
#include "worker/model.h"
#include "wmserve/v1/rollout.pb.h"
#include "wmserve/v1/worker.pb.h"

namespace wmserve::worker {

// Receives a rollout's events; called from the rollout thread and the encoder thread, so it
// must be thread-safe. Events of one kind arrive in order (chunks by index).
class RolloutEventSink {
 public:
  virtual ~RolloutEventSink() = default;
  virtual void Emit(v1::RolloutEvent event) = 0;
};

struct RolloutRunnerOptions {
  // Progress events are throttled to one per interval (plus the last step of each stage).
  absl::Duration progress_interval = absl::Milliseconds(100);
  // Optional observers (not owned; outlive the call).
  metrics::WorkerMetrics* metrics = nullptr;
  DeviceMemoryProbe* memory = nullptr;
};

// Runs the rollout to the end on the calling thread. Returns RolloutDone with status_code 0 and
// the Final totals on success; otherwise the gRPC status code and message to report
// (CANCELLED if `cancelled` was set). Never throws.
// Each VideoChunk carries its ChunkTimings (model stages and encoding; the scheduler adds queue
// and send).
v1::RolloutDone RunRollout(Model& model, const std::string& rollout_id,
                           const v1::RolloutRequest& request, const std::atomic<bool>& cancelled,
                           RolloutEventSink& sink, const RolloutRunnerOptions& options = {});

}  // namespace wmserve::worker

#endif  // WMSERVE_WORKER_ROLLOUT_RUNNER_H_
