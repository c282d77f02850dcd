// Dispatch latency of the scheduler's hub with a deep queue, in process (no network, no model):
// fake workers report RolloutDone and the bench times how long the hub takes to pick and send
// the next assignment — policy decision, bookkeeping and the Assign hand-off — with 1,000
// rollouts waiting.
//
//   scheduler_bench [--queued 1000] [--workers 8] [--tenants 10]
#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/metrics.h"
#include "server/rollout_hub.h"

namespace wmserve::server {
namespace {

class NullClient : public ClientStream {
 public:
  size_t Send(v1::RolloutEvent) override { return 0; }
  void Close(const grpc::Status&) override {}
};

class RecordingLink : public WorkerLink {
 public:
  void Send(v1::SchedulerMessage m) override {
    if (m.has_assign()) assigned.push_back(m.assign().rollout_id());
  }
  void Close(const grpc::Status&) override {}
  std::vector<std::string> assigned;
};

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

int Main(int argc, char** argv) {
  int queued = 1000, workers = 8, tenants = 10;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    int v = 0;
    if (!absl::SimpleAtoi(argv[i + 1], &v) || v <= 0) return 2;
    if (k == "--queued") queued = v;
    else if (k == "--workers") workers = v;
    else if (k == "--tenants") tenants = v;
    else return 2;
  }
  prometheus::Registry registry;
  metrics::SchedulerMetrics m(registry);
  SchedulerOptions options;
  options.max_queued = {static_cast<size_t>(queued) * 2, static_cast<size_t>(queued) * 2,
                        static_cast<size_t>(queued) * 2};
  RolloutHub hub(options, &m);

  std::vector<RecordingLink> links(workers);
  std::vector<std::string> worker_ids;
  for (int w = 0; w < workers; ++w) {
    v1::Register reg;
    reg.set_worker_name(absl::StrCat("bench-", w));
    reg.add_models()->set_name("warp");
    reg.set_max_concurrent_rollouts(1);
    reg.set_state(v1::WORKER_STATE_READY);
    worker_ids.push_back(*hub.RegisterWorker(reg, &links[w]));
  }
  NullClient client;
  v1::RolloutRequest req;
  req.set_model("warp");
  req.set_num_frames(16);
  req.set_fps(16);
  std::vector<double> submit_us;
  // `workers` rollouts start at once; the rest wait.
  for (int i = 0; i < queued + workers; ++i) {
    req.set_tenant(absl::StrCat("tenant-", i % tenants));
    req.set_priority(i % 5 == 0 ? v1::PRIORITY_HIGH : v1::PRIORITY_NORMAL);
    const absl::Time t0 = absl::Now();
    auto id = hub.Submit(req, absl::InfiniteFuture(), &client);
    submit_us.push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
    if (!id.ok()) {
      std::fprintf(stderr, "submit failed: %s\n", id.status().ToString().c_str());
      return 1;
    }
  }
  // Each round: one worker finishes; time until its next Assign has been handed to the link.
  std::vector<double> dispatch_us;
  for (int round = 0; round < queued; ++round) {
    const int w = round % workers;
    RecordingLink& link = links[w];
    v1::RolloutDone done;
    done.set_rollout_id(link.assigned.back());
    done.mutable_final()->set_outcome(v1::OUTCOME_SUCCEEDED);
    const size_t before = link.assigned.size();
    const absl::Time t0 = absl::Now();
    hub.WorkerDone(worker_ids[w], done);
    dispatch_us.push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
    if (link.assigned.size() != before + 1) {
      std::fprintf(stderr, "round %d: no assignment\n", round);
      return 1;
    }
  }
  std::printf("submit with up to %d queued: p50 %.1f us, p99 %.1f us\n", queued,
              Percentile(submit_us, 0.5), Percentile(submit_us, 0.99));
  std::printf("dispatch (RolloutDone -> next Assign) draining %d queued over %d workers, %d "
              "tenants: p50 %.1f us, p99 %.1f us, max %.1f us\n",
              queued, workers, tenants, Percentile(dispatch_us, 0.5), Percentile(dispatch_us, 0.99),
              Percentile(dispatch_us, 1.0));
  return 0;
}

}  // namespace
}  // namespace wmserve::server

int main(int argc, char** argv) { return wmserve::server::Main(argc, argv); }
