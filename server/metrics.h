// Prometheus metrics of the scheduler and the workers.
//
// Conventions (docs/ARCHITECTURE.md#metrics): one `wmserve_` prefix, base units (`_seconds`,
// `_bytes`), `_total` on counters, and only bounded label values: every label value a caller
// passes is checked against a fixed set here and anything else becomes "other", so no request
// field (and never a rollout id) can grow the number of series.
#ifndef WMSERVE_SERVER_METRICS_H_
#define WMSERVE_SERVER_METRICS_H_

#include <map>
#include <memory>
#include <string>

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace wmserve::metrics {

// Buckets for seconds-scale video work: 5 ms .. 10 min.
prometheus::Histogram::BucketBoundaries SecondsBuckets();
// Buckets for per-step / per-frame work: 0.5 ms .. 30 s.
prometheus::Histogram::BucketBoundaries StepBuckets();
// Generation seconds / video seconds: 0.05 .. 100, dense around 1 (realtime).
prometheus::Histogram::BucketBoundaries RealtimeFactorBuckets();

// `value` if it is one of `allowed`, else "other".
std::string Bounded(absl::string_view value, absl::Span<const char* const> allowed);

// Serves GET /metrics for `registry` on `address` ("host:port", port 0 = ephemeral).
class MetricsServer {
 public:
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& address, std::shared_ptr<prometheus::Registry> registry);
  // "host:port" to scrape: the bound port, and this host's name if bound to a wildcard address.
  const std::string& endpoint() const { return endpoint_; }

 private:
  MetricsServer() = default;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::string endpoint_;
};

// `wmserve_build_info{version,git_sha,component,...extra}` = 1.
void AddBuildInfo(prometheus::Registry& registry, const std::string& component,
                  const std::map<std::string, std::string>& extra = {});

// Request-level series, exported by the scheduler.
class SchedulerMetrics {
 public:
  explicit SchedulerMetrics(prometheus::Registry& registry);

  // outcome: succeeded|cancelled|failed; reason: see kRolloutEndReasons in metrics.cc.
  void RolloutEnded(absl::string_view outcome, absl::string_view reason);
  // reason: invalid_argument|unknown_model|queue_full|deadline|shutdown.
  void Rejected(absl::string_view reason);
  // reason: exit|signal.
  void WorkerRestarted(absl::string_view reason);
  // priority: high|normal|low.
  void SetWaiting(absl::string_view priority, double n);
  // state: LOADING|READY|BUSY|DRAINING|DEAD.
  void SetWorkers(absl::string_view state, double n);

  prometheus::Gauge& running;
  prometheus::Gauge& send_queue_bytes;
  prometheus::Histogram& queue_time;
  prometheus::Histogram& time_to_first_chunk;
  prometheus::Histogram& inter_chunk;
  prometheus::Histogram& rollout_duration;
  prometheus::Histogram& realtime_factor;
  prometheus::Counter& chunks_sent;
  prometheus::Counter& bytes_sent;
  prometheus::Counter& resumes;

 private:
  prometheus::Family<prometheus::Counter>& rollouts_;
  prometheus::Family<prometheus::Counter>& rejections_;
  prometheus::Family<prometheus::Counter>& restarts_;
  prometheus::Family<prometheus::Gauge>& waiting_;
  prometheus::Family<prometheus::Gauge>& workers_;
};

// Stage- and device-level series, exported by each worker.
class WorkerMetrics {
 public:
  explicit WorkerMetrics(prometheus::Registry& registry);

  // stage: image_encode|backbone|refiner|decode|video_encode|send.
  void StageTime(absl::string_view stage, double seconds);
  void DenoiseStep(absl::string_view stage, double seconds);
  // stage: backbone|video_encode.
  void FramesGenerated(absl::string_view stage, double frames);
  // outcome: succeeded|cancelled|failed.
  void RolloutEnded(absl::string_view outcome);
  // Exactly one of LOADING|READY|BUSY|DRAINING is 1.
  void SetState(absl::string_view state);
  // pool: weights|rollout_state|allocated|reserved|free|total|process_resident|host_total|
  // host_available.
  void SetMemory(const std::string& gpu, const std::string& uuid, absl::string_view pool,
                 double bytes);
  // stage as for StageTime; CUDA only.
  void SetPeakMemory(const std::string& gpu, const std::string& uuid, absl::string_view stage,
                     double bytes);

  // One co-batched backbone chunk: rollouts that shared its forwards (1 = ran alone).
  void BatchRun(int batch_size);

  prometheus::Counter& oom_events;
  prometheus::Gauge& rollouts_running;

 private:
  prometheus::Family<prometheus::Histogram>& stage_duration_;
  prometheus::Family<prometheus::Histogram>& denoise_step_;
  prometheus::Family<prometheus::Counter>& frames_;
  prometheus::Family<prometheus::Counter>& rollouts_;
  prometheus::Family<prometheus::Gauge>& state_;
  prometheus::Family<prometheus::Gauge>& memory_;
  prometheus::Family<prometheus::Gauge>& peak_memory_;
  prometheus::Histogram& batch_size_;
};

}  // namespace wmserve::metrics

#endif  // WMSERVE_SERVER_METRICS_H_
