// The scheduler process's gRPC side: the public RolloutService and the internal WorkerGateway,
// both on the callback API with one reactor per RPC, sharing one RolloutHub.
//
//   client --Rollout--> RolloutReactor --Submit--> RolloutHub --Assign--> WorkerReactor --> worker
//   client <--events--- RolloutReactor <--Send---- RolloutHub <--Update--- WorkerReactor <-- worker
//
// The hub owns all rollout and worker state under one mutex and asks the (pure) QueuePolicy
// what to start. Lock order: hub mutex -> reactor mutex. Reactors never call into the hub while
// holding their own mutex, and never block.
#ifndef WMSERVE_SERVER_SCHEDULER_SERVER_H_
#define WMSERVE_SERVER_SCHEDULER_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/metrics.h"
#include "server/request_validation.h"
#include "server/rollout_hub.h"
#include "wmserve/v1/rollout.grpc.pb.h"
#include "wmserve/v1/worker.grpc.pb.h"

namespace wmserve::server {

class RolloutHub;

class SchedulerServer {
 public:
  SchedulerServer(const SchedulerOptions& options, metrics::SchedulerMetrics* metrics);
  ~SchedulerServer();

  grpc::Service* rollout_service();
  grpc::Service* worker_gateway();

  // Heartbeat expiry and housekeeping; call every ~100 ms.
  void Tick();
  // Graceful shutdown, step 1: refuse new rollouts (UNAVAILABLE); queued and running continue.
  void StopAccepting();
  // Blocks until no rollout is queued or running, or `timeout`; true if idle.
  bool WaitIdle(absl::Duration timeout);
  // Ends every queued/running rollout with UNAVAILABLE `reason` and asks workers to drain.
  void AbortAll(const std::string& reason);

 private:
  std::unique_ptr<RolloutHub> hub_;
  std::unique_ptr<v1::RolloutService::CallbackService> rollout_service_;
  std::unique_ptr<v1::WorkerGateway::CallbackService> worker_gateway_;
};

}  // namespace wmserve::server

#endif  // WMSERVE_SERVER_SCHEDULER_SERVER_H_
