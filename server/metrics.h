// Prometheus metrics of the scheduler and the workers (first cut; names follow
// docs/ARCHITECTURE.md#metrics: `wmserve_` prefix, base units, `_total` counters, bounded labels).
#ifndef WMSERVE_SERVER_METRICS_H_
#define WMSERVE_SERVER_METRICS_H_

#include <memory>
#include <string>

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/status/statusor.h"

namespace wmserve::metrics {

// Buckets for seconds-scale video work: 5 ms .. 10 min.
prometheus::Histogram::BucketBoundaries SecondsBuckets();

// Serves GET /metrics for `registry` on `address` ("host:port", port 0 = ephemeral).
class MetricsServer {
 public:
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& address, std::shared_ptr<prometheus::Registry> registry);
  // "host:port" actually bound.
  const std::string& endpoint() const { return endpoint_; }

 private:
  MetricsServer() = default;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::string endpoint_;
};

// `wmserve_build_info{version,git_sha,component}` = 1.
void AddBuildInfo(prometheus::Registry& registry, const std::string& component);

struct SchedulerMetrics {
  explicit SchedulerMetrics(prometheus::Registry& registry);
  prometheus::Family<prometheus::Counter>& rollouts;   // {outcome}
  prometheus::Family<prometheus::Counter>& rejections; // {reason}
  prometheus::Family<prometheus::Counter>& worker_restarts;  // {reason}
  prometheus::Gauge& running;
  prometheus::Gauge& waiting;
  prometheus::Family<prometheus::Gauge>& workers;      // {state}
  prometheus::Histogram& queue_time;
  prometheus::Histogram& time_to_first_chunk;
  prometheus::Histogram& rollout_duration;
  prometheus::Counter& chunks_sent;
  prometheus::Counter& bytes_sent;
};

struct WorkerMetrics {
  WorkerMetrics(prometheus::Registry& registry, const std::string& device);
  prometheus::Family<prometheus::Counter>& frames_generated;  // {stage}
  prometheus::Family<prometheus::Histogram>& stage_duration;  // {stage}
  prometheus::Gauge& rollouts_running;
  prometheus::Family<prometheus::Counter>& rollouts;          // {outcome}
  prometheus::Gauge& resident_memory;                         // process RSS, bytes
  prometheus::Histogram& StageDuration(const std::string& stage);
  prometheus::Counter& FramesGenerated(const std::string& stage);
};

}  // namespace wmserve::metrics

#endif  // WMSERVE_SERVER_METRICS_H_
