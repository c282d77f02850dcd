#include "server/metrics.h"

#include <unistd.h>

#include <exception>

#include "absl/strings/str_cat.h"

namespace wmserve::metrics {
namespace {

constexpr const char* kOutcomes[] = {"succeeded", "cancelled", "failed"};
// Why a rollout ended (the scheduler's view).
constexpr const char* kRolloutEndReasons[] = {
    "completed",   "client_cancel",  "cancel_rpc", "worker_lost", "worker_error",
    "slow_client", "protocol_error", "shutdown",   "deadline"};
constexpr const char* kRejectReasons[] = {"invalid_argument", "unknown_model", "queue_full",
                                          "deadline", "shutdown"};
constexpr const char* kPriorities[] = {"high", "normal", "low"};
constexpr const char* kRestartReasons[] = {"exit", "signal"};
constexpr const char* kWorkerStates[] = {"LOADING", "READY", "BUSY",
                                                              "DRAINING", "DEAD"};
constexpr const char* kStages[] = {"image_encode", "backbone", "refiner",
                                                        "decode", "video_encode", "send"};
constexpr const char* kMemoryPools[] = {
    "weights", "rollout_state", "allocated", "reserved", "free", "total",
    "process_resident", "host_total", "host_available"};

std::string LocalHostName() {
  char buf[256] = {0};
  ::gethostname(buf, sizeof(buf) - 1);
  return buf;
}

}  // namespace

prometheus::Histogram::BucketBoundaries SecondsBuckets() {
  return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
}

prometheus::Histogram::BucketBoundaries StepBuckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
}

prometheus::Histogram::BucketBoundaries RealtimeFactorBuckets() {
  return {0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1, 1.1, 1.25, 1.5, 2, 3, 5, 10, 25, 100};
}

std::string Bounded(absl::string_view value, absl::Span<const char* const> allowed) {
  for (const char* a : allowed) {
    if (value == a) return a;
  }
  return "other";
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& address, std::shared_ptr<prometheus::Registry> registry) {
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  try {
    server->exposer_ = std::make_unique<prometheus::Exposer>(address, /*num_threads=*/2);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("metrics: cannot listen on ", address, ": ", e.what()));
  }
  server->exposer_->RegisterCollectable(registry);
  const auto ports = server->exposer_->GetListeningPorts();
  std::string host = address.substr(0, address.rfind(':'));
  if (host.empty() || host == "0.0.0.0" || host == "[::]") host = LocalHostName();
  server->endpoint_ = absl::StrCat(host, ":", ports.empty() ? 0 : ports[0]);
  return server;
}

void AddBuildInfo(prometheus::Registry& registry, const std::string& component,
                  const std::map<std::string, std::string>& extra) {
  std::map<std::string, std::string> labels = extra;
  labels["version"] = WMSERVE_VERSION;
  labels["git_sha"] = WMSERVE_GIT_SHA;
  labels["component"] = component;
  prometheus::BuildGauge()
      .Name("wmserve_build_info")
      .Help("Build information; always 1.")
      .Register(registry)
      .Add(labels)
      .Set(1);
}

namespace {

prometheus::Histogram& Hist(prometheus::Registry& r, const char* name, const char* help,
                            prometheus::Histogram::BucketBoundaries buckets) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add({}, std::move(buckets));
}

}  // namespace

SchedulerMetrics::SchedulerMetrics(prometheus::Registry& r)
    : running(prometheus::BuildGauge()
                  .Name("wmserve_rollouts_running")
                  .Help("Rollouts assigned to a worker and not finished.")
                  .Register(r)
                  .Add({})),
      send_queue_bytes(prometheus::BuildGauge()
                           .Name("wmserve_send_queue_bytes")
                           .Help("Event bytes queued for clients and not yet written.")
                           .Register(r)
                           .Add({})),
      queue_time(Hist(r, "wmserve_queue_time_seconds", "Arrival to assignment to a worker.",
                      SecondsBuckets())),
      time_to_first_chunk(Hist(r, "wmserve_time_to_first_chunk_seconds",
                               "Arrival to the first video chunk handed to the client stream.",
                               SecondsBuckets())),
      inter_chunk(Hist(r, "wmserve_inter_chunk_seconds",
                       "Gap between consecutive chunks handed to a client stream.",
                       SecondsBuckets())),
      rollout_duration(Hist(r, "wmserve_rollout_duration_seconds",
                            "Arrival to the end of the rollout, any outcome.", SecondsBuckets())),
      realtime_factor(Hist(r, "wmserve_realtime_factor",
                           "Generation seconds (assignment to completion) divided by the seconds "
                           "of video produced; below 1 is faster than realtime.",
                           RealtimeFactorBuckets())),
      chunks_sent(prometheus::BuildCounter()
                      .Name("wmserve_chunks_sent_total")
                      .Help("Video chunks relayed to clients.")
                      .Register(r)
                      .Add({})),
      bytes_sent(prometheus::BuildCounter()
                     .Name("wmserve_bytes_sent_total")
                     .Help("Video bytes (init + media segments) relayed to clients.")
                     .Register(r)
                     .Add({})),
      resumes(prometheus::BuildCounter()
                  .Name("wmserve_resumes_total")
                  .Help("Rollouts moved to another worker after losing theirs.")
                  .Register(r)
                  .Add({})),
      rollouts_(prometheus::BuildCounter()
                    .Name("wmserve_rollouts_total")
                    .Help("Rollouts that reached a terminal state, by outcome and reason.")
                    .Register(r)),
      rejections_(prometheus::BuildCounter()
                      .Name("wmserve_admission_rejections_total")
                      .Help("Rollout requests refused before queueing, by reason.")
                      .Register(r)),
      restarts_(prometheus::BuildCounter()
                    .Name("wmserve_worker_restarts_total")
                    .Help("Local worker processes that exited and were respawned, by reason.")
                    .Register(r)),
      waiting_(prometheus::BuildGauge()
                   .Name("wmserve_rollouts_waiting")
                   .Help("Rollouts in the queue, by priority class.")
                   .Register(r)),
      workers_(prometheus::BuildGauge()
                   .Name("wmserve_workers")
                   .Help("Known workers by state.")
                   .Register(r)) {
  // Pre-create the common series so rates start from 0 instead of appearing mid-way.
  rollouts_.Add({{"outcome", "succeeded"}, {"reason", "completed"}});
  for (const char* reason : kRejectReasons) rejections_.Add({{"reason", reason}});
  for (const char* reason : kRestartReasons) restarts_.Add({{"reason", reason}});
  for (const char* state : kWorkerStates) workers_.Add({{"state", state}});
  for (const char* p : kPriorities) waiting_.Add({{"priority", p}});
}

void SchedulerMetrics::RolloutEnded(absl::string_view outcome, absl::string_view reason) {
  rollouts_.Add({{"outcome", Bounded(outcome, kOutcomes)},
                 {"reason", Bounded(reason, kRolloutEndReasons)}})
      .Increment();
}
void SchedulerMetrics::Rejected(absl::string_view reason) {
  rejections_.Add({{"reason", Bounded(reason, kRejectReasons)}}).Increment();
}
void SchedulerMetrics::WorkerRestarted(absl::string_view reason) {
  restarts_.Add({{"reason", Bounded(reason, kRestartReasons)}}).Increment();
}
void SchedulerMetrics::SetWaiting(absl::string_view priority, double n) {
  waiting_.Add({{"priority", Bounded(priority, kPriorities)}}).Set(n);
}
void SchedulerMetrics::SetWorkers(absl::string_view state, double n) {
  workers_.Add({{"state", Bounded(state, kWorkerStates)}}).Set(n);
}

WorkerMetrics::WorkerMetrics(prometheus::Registry& r)
    : oom_events(prometheus::BuildCounter()
                     .Name("wmserve_oom_events_total")
                     .Help("Rollouts that failed because device memory ran out.")
                     .Register(r)
                     .Add({})),
      rollouts_running(prometheus::BuildGauge()
                           .Name("wmserve_worker_rollouts_running")
                           .Help("Rollouts running on this worker.")
                           .Register(r)
                           .Add({})),
      stage_duration_(prometheus::BuildHistogram()
                          .Name("wmserve_stage_duration_seconds")
                          .Help("Wall time per chunk spent in each stage.")
                          .Register(r)),
      denoise_step_(prometheus::BuildHistogram()
                        .Name("wmserve_denoise_step_seconds")
                        .Help("Wall time of one model step (denoise step, or frame for "
                              "single-pass models), by stage.")
                        .Register(r)),
      frames_(prometheus::BuildCounter()
                  .Name("wmserve_frames_generated_total")
                  .Help("Frames produced, by stage (backbone = model output, video_encode = "
                        "encoded and sent).")
                  .Register(r)),
      rollouts_(prometheus::BuildCounter()
                    .Name("wmserve_worker_rollouts_total")
                    .Help("Rollouts finished on this worker, by outcome.")
                    .Register(r)),
      state_(prometheus::BuildGauge()
                 .Name("wmserve_worker_state")
                 .Help("1 for the worker's current lifecycle state, 0 for the others.")
                 .Register(r)),
      memory_(prometheus::BuildGauge()
                  .Name("wmserve_gpu_memory_bytes")
                  .Help("Device memory by pool. CUDA: allocator (allocated, reserved), model "
                        "accounting (weights, rollout_state) and NVML (free, total). CPU-only "
                        "workers (gpu=\"cpu\"): process_resident, host_total, host_available.")
                  .Register(r)),
      peak_memory_(prometheus::BuildGauge()
                       .Name("wmserve_peak_memory_bytes")
                       .Help("Peak allocated device memory observed during each stage (CUDA).")
                       .Register(r)),
      batch_size_(prometheus::BuildHistogram()
                      .Name("wmserve_batch_size")
                      .Help("Rollouts per co-batched backbone chunk (one batched forward per "
                            "denoising step); 1 = the chunk ran alone.")
                      .Register(r)
                      .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 3, 4, 6, 8, 12, 16})) {
  for (const char* stage : {"backbone", "video_encode"}) frames_.Add({{"stage", stage}});
  for (const char* outcome : kOutcomes) rollouts_.Add({{"outcome", outcome}});
  SetState("LOADING");
}

void WorkerMetrics::StageTime(absl::string_view stage, double seconds) {
  stage_duration_.Add({{"stage", Bounded(stage, kStages)}}, SecondsBuckets()).Observe(seconds);
}
void WorkerMetrics::BatchRun(int batch_size) { batch_size_.Observe(batch_size); }

void WorkerMetrics::DenoiseStep(absl::string_view stage, double seconds) {
  denoise_step_.Add({{"stage", Bounded(stage, kStages)}}, StepBuckets()).Observe(seconds);
}
void WorkerMetrics::FramesGenerated(absl::string_view stage, double frames) {
  frames_.Add({{"stage", Bounded(stage, kStages)}}).Increment(frames);
}
void WorkerMetrics::RolloutEnded(absl::string_view outcome) {
  rollouts_.Add({{"outcome", Bounded(outcome, kOutcomes)}}).Increment();
}
void WorkerMetrics::SetState(absl::string_view state) {
  for (const char* s : {"LOADING", "READY", "BUSY", "DRAINING"}) {
    state_.Add({{"state", s}}).Set(state == s ? 1 : 0);
  }
}
void WorkerMetrics::SetMemory(const std::string& gpu, const std::string& uuid,
                              absl::string_view pool, double bytes) {
  memory_.Add({{"gpu", gpu}, {"UUID", uuid}, {"pool", Bounded(pool, kMemoryPools)}}).Set(bytes);
}
void WorkerMetrics::SetPeakMemory(const std::string& gpu, const std::string& uuid,
                                  absl::string_view stage, double bytes) {
  peak_memory_.Add({{"gpu", gpu}, {"UUID", uuid}, {"stage", Bounded(stage, kStages)}}).Set(bytes);
}

}  // namespace wmserve::metrics
