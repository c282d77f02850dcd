#include "server/metrics.h"

#include <exception>

#include "absl/strings/str_cat.h"

namespace wmserve::metrics {

prometheus::Histogram::BucketBoundaries SecondsBuckets() {
  return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& address, std::shared_ptr<prometheus::Registry> registry) {
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  try {
    server->exposer_ = std::make_unique<prometheus::Exposer>(address, /*num_threads=*/1);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("metrics: cannot listen on ", address, ": ", e.what()));
  }
  server->exposer_->RegisterCollectable(registry);
  const auto ports = server->exposer_->GetListeningPorts();
  const std::string host = address.substr(0, address.rfind(':'));
  server->endpoint_ = absl::StrCat(host, ":", ports.empty() ? 0 : ports[0]);
  return server;
}

void AddBuildInfo(prometheus::Registry& registry, const std::string& component) {
  prometheus::BuildGauge()
      .Name("wmserve_build_info")
      .Help("Build information; always 1.")
      .Register(registry)
      .Add({{"version", WMSERVE_VERSION}, {"git_sha", WMSERVE_GIT_SHA}, {"component", component}})
      .Set(1);
}

SchedulerMetrics::SchedulerMetrics(prometheus::Registry& r)
    : rollouts(prometheus::BuildCounter()
                   .Name("wmserve_rollouts_total")
                   .Help("Rollouts that reached a terminal state, by outcome.")
                   .Register(r)),
      rejections(prometheus::BuildCounter()
                     .Name("wmserve_admission_rejections_total")
                     .Help("Rollout requests rejected before queueing, by reason.")
                     .Register(r)),
      worker_restarts(prometheus::BuildCounter()
                          .Name("wmserve_worker_restarts_total")
                          .Help("Local worker processes respawned, by reason.")
                          .Register(r)),
      running(prometheus::BuildGauge()
                  .Name("wmserve_rollouts_running")
                  .Help("Rollouts assigned to a worker and not finished.")
                  .Register(r)
                  .Add({})),
      waiting(prometheus::BuildGauge()
                  .Name("wmserve_rollouts_waiting")
                  .Help("Rollouts in the queue.")
                  .Register(r)
                  .Add({})),
      workers(prometheus::BuildGauge()
                  .Name("wmserve_workers")
                  .Help("Known workers by state.")
                  .Register(r)),
      queue_time(prometheus::BuildHistogram()
                     .Name("wmserve_queue_time_seconds")
                     .Help("Time from arrival to assignment to a worker.")
                     .Register(r)
                     .Add({}, SecondsBuckets())),
      time_to_first_chunk(prometheus::BuildHistogram()
                              .Name("wmserve_time_to_first_chunk_seconds")
                              .Help("Time from arrival to the first video chunk handed to the "
                                    "client stream.")
                              .Register(r)
                              .Add({}, SecondsBuckets())),
      rollout_duration(prometheus::BuildHistogram()
                           .Name("wmserve_rollout_duration_seconds")
                           .Help("Time from arrival to the end of the rollout (any outcome).")
                           .Register(r)
                           .Add({}, SecondsBuckets())),
      chunks_sent(prometheus::BuildCounter()
                      .Name("wmserve_chunks_sent_total")
                      .Help("Video chunks relayed to clients.")
                      .Register(r)
                      .Add({})),
      bytes_sent(prometheus::BuildCounter()
                     .Name("wmserve_bytes_sent_total")
                     .Help("Video bytes (init + media segments) relayed to clients.")
                     .Register(r)
                     .Add({})) {
  for (const char* outcome : {"succeeded", "cancelled", "failed"}) rollouts.Add({{"outcome", outcome}});
}

WorkerMetrics::WorkerMetrics(prometheus::Registry& r, const std::string& device)
    : frames_generated(prometheus::BuildCounter()
                           .Name("wmserve_frames_generated_total")
                           .Help("Frames produced, by stage.")
                           .Labels({{"device", device}})
                           .Register(r)),
      stage_duration(prometheus::BuildHistogram()
                         .Name("wmserve_stage_duration_seconds")
                         .Help("Wall time per rollout chunk spent in each stage.")
                         .Labels({{"device", device}})
                         .Register(r)),
      rollouts_running(prometheus::BuildGauge()
                           .Name("wmserve_worker_rollouts_running")
                           .Help("Rollouts running on this worker.")
                           .Labels({{"device", device}})
                           .Register(r)
                           .Add({})),
      rollouts(prometheus::BuildCounter()
                   .Name("wmserve_worker_rollouts_total")
                   .Help("Rollouts finished on this worker, by outcome.")
                   .Labels({{"device", device}})
                   .Register(r)),
      resident_memory(prometheus::BuildGauge()
                          .Name("wmserve_process_resident_memory_bytes")
                          .Help("Resident set size of the worker process.")
                          .Register(r)
                          .Add({})) {}

prometheus::Histogram& WorkerMetrics::StageDuration(const std::string& stage) {
  return stage_duration.Add({{"stage", stage}}, SecondsBuckets());
}

prometheus::Counter& WorkerMetrics::FramesGenerated(const std::string& stage) {
  return frames_generated.Add({{"stage", stage}});
}

}  // namespace wmserve::metrics
