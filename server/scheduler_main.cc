// wmserve-scheduler: accepts rollouts over gRPC, queues them, dispatches them to workers and
// relays their video back. Optionally spawns and supervises local worker processes.
//
// Shutdown (SIGTERM/SIGINT): stop accepting, let queued and running rollouts finish for up to
// --drain-timeout, cancel what is left with UNAVAILABLE, stop local workers, exit 0.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "server/cli_flags.h"
#include "server/local_workers.h"
#include "server/logging.h"
#include "server/metrics.h"
#include "server/scheduler_server.h"

ABSL_FLAG(std::string, config, "",
          "Config file of `flag = value` lines (# comments). Command-line flags override it.");
ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "gRPC address for clients and workers (host:port; port 0 = ephemeral).");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "Prometheus /metrics address (host:port; port 0 = ephemeral; empty = off).");
ABSL_FLAG(int, local_workers, 0, "Worker child processes to spawn and supervise.");
ABSL_FLAG(std::string, worker_args, "",
          "Extra arguments for local workers, space-separated, e.g. \"--device cpu\".");
ABSL_FLAG(std::string, worker_binary, "",
          "Path of wmserve-worker for local workers (default: next to this binary).");
ABSL_FLAG(std::string, models, "warp",
          "Comma-separated models accepted before any worker serving them has connected.");
ABSL_FLAG(int, max_queue, 256,
          "Rollouts allowed to wait per priority class; more get RESOURCE_EXHAUSTED with a "
          "retry-after hint.");
ABSL_FLAG(int, aging_step_s, 30,
          "A waiting rollout rises one priority class per this many seconds (no starvation).");
ABSL_FLAG(std::string, tenant_weights, "",
          "Fair-share weights, e.g. \"teamA=2,teamB=1\" (others weigh 1).");
ABSL_FLAG(int, max_resumes, 3, "Times a rollout may move to another worker after losing one.");
ABSL_FLAG(int, rollout_buffer_mb, 64, "Per-rollout buffer of recent chunks for Attach (MiB).");
ABSL_FLAG(int, max_reattach_grace_s, 600, "Upper bound on a request's reattach_grace_s.");
ABSL_FLAG(int, respawn_backoff_max_ms, 30000,
          "Longest wait before respawning a local worker that keeps exiting (doubles from 500 ms).");
ABSL_FLAG(int, quarantine_after, 5,
          "Refuse a worker name lost this many times within 10 minutes (0 = never).");
ABSL_FLAG(int, no_worker_timeout_s, 30,
          "A queued rollout whose model no live worker serves this long fails UNAVAILABLE.");
ABSL_FLAG(int, heartbeat_timeout_ms, 5000, "A worker silent this long is declared DEAD.");
ABSL_FLAG(int, drain_timeout_s, 30, "On SIGTERM, how long in-flight rollouts may finish.");
ABSL_FLAG(int, max_request_mb, 64, "Largest accepted gRPC message (MiB).");
ABSL_FLAG(std::string, log_level, "info", "debug | info | warning | error");
ABSL_FLAG(std::string, file_sd_path, "",
          "Write a Prometheus file_sd JSON file listing live workers' metrics endpoints here.");
ABSL_FLAG(std::string, ready_file, "",
          "Once serving, write `listen=HOST:PORT` and `metrics=HOST:PORT` lines here (atomic "
          "rename); lets scripts and tests use ephemeral ports.");

namespace wmserve::server {
namespace {

std::string DefaultWorkerBinary() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "wmserve-worker";
  std::string self(buf, static_cast<size_t>(n));
  // Build tree: server/wmserve-scheduler next to worker/wmserve-worker; install: same folder.
  const std::string dir = self.substr(0, self.rfind('/'));
  const std::string sibling = dir + "/wmserve-worker";
  if (::access(sibling.c_str(), X_OK) == 0) return sibling;
  return dir + "/../worker/wmserve-worker";
}

absl::Status WriteReadyFile(const std::string& path, const std::string& listen,
                            const std::string& metrics) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << "listen=" << listen << "\nmetrics=" << metrics << "\npid=" << ::getpid() << "\n";
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

int Fail(const absl::Status& status) {
  WM_LOG(kError, "startup_failed") << log::Kv("status", status.ToString());
  std::fprintf(stderr, "wmserve-scheduler: %s\n", status.ToString().c_str());
  return 1;
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage("wmserve-scheduler --listen HOST:PORT [--local-workers N] ...");
  if (absl::Status s = ParseDaemonFlags(argc, argv, [] { return absl::GetFlag(FLAGS_config); });
      !s.ok()) {
    return Fail(s);
  }
  absl::StatusOr<sigset_t> stop_signals =
      InitDaemon("scheduler", absl::GetFlag(FLAGS_log_level));
  if (!stop_signals.ok()) return Fail(stop_signals.status());

  auto registry = std::make_shared<prometheus::Registry>();
  metrics::AddBuildInfo(*registry, "scheduler");
  metrics::SchedulerMetrics scheduler_metrics(*registry);
  std::unique_ptr<metrics::MetricsServer> metrics_server;
  std::string metrics_endpoint;
  if (!absl::GetFlag(FLAGS_metrics_listen).empty()) {
    auto started = metrics::MetricsServer::Start(absl::GetFlag(FLAGS_metrics_listen), registry);
    if (!started.ok()) return Fail(started.status());
    metrics_server = *std::move(started);
    metrics_endpoint = metrics_server->endpoint();
  }

  SchedulerOptions options;
  const size_t max_queue = static_cast<size_t>(std::max(1, absl::GetFlag(FLAGS_max_queue)));
  options.max_queued = {max_queue, max_queue, max_queue};
  options.fair_share.aging_step = absl::Seconds(std::max(1, absl::GetFlag(FLAGS_aging_step_s)));
  options.max_resumes = std::max(0, absl::GetFlag(FLAGS_max_resumes));
  options.quarantine_after = std::max(0, absl::GetFlag(FLAGS_quarantine_after));
  options.rollout_buffer_bytes =
      static_cast<size_t>(std::max(1, absl::GetFlag(FLAGS_rollout_buffer_mb))) << 20;
  options.max_reattach_grace = absl::Seconds(std::max(0, absl::GetFlag(FLAGS_max_reattach_grace_s)));
  options.no_worker_timeout = absl::Seconds(std::max(1, absl::GetFlag(FLAGS_no_worker_timeout_s)));
  for (absl::string_view kv :
       absl::StrSplit(absl::GetFlag(FLAGS_tenant_weights), ',', absl::SkipWhitespace())) {
    std::pair<std::string, std::string> parts = absl::StrSplit(kv, absl::MaxSplits('=', 1));
    double w = 0;
    if (!absl::SimpleAtod(parts.second, &w) || !(w > 0)) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("--tenant-weights: \"", kv, "\" is not tenant=positive-number")));
    }
    options.tenant_weights[parts.first] = w;
  }
  options.heartbeat_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_heartbeat_timeout_ms));
  options.file_sd_path = absl::GetFlag(FLAGS_file_sd_path);
  options.known_models = absl::StrSplit(absl::GetFlag(FLAGS_models), ',', absl::SkipEmpty());
  SchedulerServer scheduler(options, &scheduler_metrics);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  const std::string listen = absl::GetFlag(FLAGS_listen);
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(absl::GetFlag(FLAGS_max_request_mb) << 20);
  builder.SetMaxSendMessageSize(absl::GetFlag(FLAGS_max_request_mb) << 20);
  // Without keepalive pings a worker whose host vanished is only noticed by missed heartbeats.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  builder.RegisterService(scheduler.rollout_service());
  builder.RegisterService(scheduler.worker_gateway());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return Fail(absl::UnavailableError(absl::StrCat("cannot listen on ", listen)));
  }
  const std::string host = listen.substr(0, listen.rfind(':'));
  const std::string bound = absl::StrCat(host, ":", port);
  server->GetHealthCheckService()->SetServingStatus(true);

  std::unique_ptr<LocalWorkerSupervisor> local_workers;
  if (absl::GetFlag(FLAGS_local_workers) > 0) {
    LocalWorkerOptions lw;
    lw.count = absl::GetFlag(FLAGS_local_workers);
    lw.binary = absl::GetFlag(FLAGS_worker_binary).empty() ? DefaultWorkerBinary()
                                                           : absl::GetFlag(FLAGS_worker_binary);
    // Children dial loopback even if we listen on all interfaces.
    lw.scheduler_address =
        (host == "0.0.0.0" || host == "[::]" || host.empty()) ? absl::StrCat("127.0.0.1:", port)
                                                               : bound;
    lw.extra_args = absl::StrSplit(absl::GetFlag(FLAGS_worker_args), ' ', absl::SkipWhitespace());
    lw.max_backoff = absl::Milliseconds(std::max(1, absl::GetFlag(FLAGS_respawn_backoff_max_ms)));
    lw.min_backoff = std::min(lw.min_backoff, lw.max_backoff);
    auto started = LocalWorkerSupervisor::Start(lw, &scheduler_metrics);
    if (!started.ok()) return Fail(started.status());
    local_workers = *std::move(started);
  }

  WM_LOG(kInfo, "scheduler_serving") << log::Kv("listen", bound)
                                     << log::Kv("metrics", metrics_endpoint)
                                     << log::Kv("local_workers", absl::GetFlag(FLAGS_local_workers))
                                     << log::Kv("version", WMSERVE_VERSION)
                                     << log::Kv("git_sha", WMSERVE_GIT_SHA);
  if (!absl::GetFlag(FLAGS_ready_file).empty()) {
    if (absl::Status s = WriteReadyFile(absl::GetFlag(FLAGS_ready_file), bound, metrics_endpoint);
        !s.ok()) {
      return Fail(s);
    }
  }

  std::atomic<bool> stop{false};
  std::thread ticker([&] {
    while (!stop.load()) {
      scheduler.Tick();
      absl::SleepFor(absl::Milliseconds(100));
    }
  });

  int signal_number = 0;
  sigwait(&*stop_signals, &signal_number);
  WM_LOG(kInfo, "scheduler_draining") << log::Kv("signal", signal_number)
                                      << log::Kv("timeout_s", absl::GetFlag(FLAGS_drain_timeout_s));
  server->GetHealthCheckService()->SetServingStatus(false);
  scheduler.StopAccepting();
  if (!scheduler.WaitIdle(absl::Seconds(absl::GetFlag(FLAGS_drain_timeout_s)))) {
    scheduler.AbortAll("scheduler shut down before the rollout finished");
  }
  scheduler.AbortAll("scheduler shutting down");  // also tells workers to drain
  if (local_workers) local_workers->Stop(absl::Seconds(5));
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  stop.store(true);
  ticker.join();
  WM_LOG(kInfo, "scheduler_stopped");
  return 0;
}

}  // namespace
}  // namespace wmserve::server

int main(int argc, char** argv) { return wmserve::server::Main(argc, argv); }
