// The worker's connection to the scheduler and its rollout threads.
//
// Lifecycle (each step logged):  load models -> warm up -> READY, while connected:
//
//   Run():  connect --Register(LOADING|READY)--> scheduler
//           <-- Registered, Assign, CancelRollout, Drain
//           --> Heartbeat (every interval), RolloutUpdate (events), RolloutDone
//
// Each Assign runs on its own thread (up to max_concurrent). If the stream breaks, running
// rollouts are cancelled (their client has been told UNAVAILABLE by the scheduler) and the agent
// reconnects with exponential back-off. Drain, or Shutdown(), ends Run() once idle.
#ifndef WMSERVE_WORKER_WORKER_AGENT_H_
#define WMSERVE_WORKER_WORKER_AGENT_H_

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/metrics.h"
#include "worker/device_memory.h"
#include "worker/model.h"
#include "wmserve/v1/rollout.pb.h"

namespace wmserve::worker {

struct WorkerAgentOptions {
  std::string scheduler_address;  // host:port
  std::string name;               // shown in ListWorkers / logs
  std::string device = "cpu";
  std::vector<std::string> models;  // names the loader will produce, announced at Register
  int max_concurrent = 1;
  std::string metrics_endpoint;  // advertised to the scheduler
  absl::Duration reconnect_min = absl::Milliseconds(200);
  absl::Duration reconnect_max = absl::Seconds(5);
  int max_message_mb = 64;
};

// Loads (and warms up) the models; runs on a background thread so the worker can register as
// LOADING meanwhile.
using ModelLoader = std::function<absl::StatusOr<std::vector<std::unique_ptr<Model>>>()>;

class WorkerAgent {
 public:
  // `metrics` and `memory` may be null; otherwise they outlive the agent.
  WorkerAgent(WorkerAgentOptions options, ModelLoader loader, metrics::WorkerMetrics* metrics,
              DeviceMemoryProbe* memory);
  ~WorkerAgent();

  // Blocks until drained, shut down, or model loading failed. Returns the process exit code.
  int Run();
  // Thread-safe; makes Run() return after cancelling running rollouts.
  void Shutdown();

 private:
  class Connection;
  struct RunningRollout {
    std::atomic<bool> cancelled{false};
    std::thread thread;
    bool finished = false;
  };

  void LoadModels();
  // One connected session; returns when the stream ends.
  void Serve();
  void StartRollout(Connection& conn, const std::string& id, v1::RolloutRequest request)
      ABSL_LOCKS_EXCLUDED(mu_);
  void CancelAll() ABSL_LOCKS_EXCLUDED(mu_);
  void JoinFinished() ABSL_LOCKS_EXCLUDED(mu_);
  void JoinAll() ABSL_LOCKS_EXCLUDED(mu_);
  Model* FindModel(const std::string& name) ABSL_LOCKS_EXCLUDED(mu_);
  bool ready() const { return ready_.load(); }

  const WorkerAgentOptions options_;
  ModelLoader loader_;
  metrics::WorkerMetrics* const metrics_;
  DeviceMemoryProbe* const memory_;
  struct DeviceCapacity {
    uint64_t total = 0;
    uint64_t free = 0;
  };
  DeviceCapacity Capacity() const;
  void PublishState() ABSL_LOCKS_EXCLUDED(mu_);
  void PublishMemory() ABSL_LOCKS_EXCLUDED(mu_);

  std::atomic<bool> ready_{false};
  std::atomic<bool> shutdown_{false};
  std::atomic<bool> draining_{false};
  std::atomic<bool> load_failed_{false};
  std::thread loader_thread_;

  absl::Mutex mu_;
  std::vector<std::unique_ptr<Model>> models_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<RunningRollout>> running_ ABSL_GUARDED_BY(mu_);
  Connection* connection_ ABSL_GUARDED_BY(mu_) = nullptr;  // the live session, if any
};

}  // namespace wmserve::worker

#endif  // WMSERVE_WORKER_WORKER_AGENT_H_
