// RolloutHub: the scheduler's state — queued and running rollouts, their client streams, the
// workers — behind one mutex. Transport-agnostic: it talks to clients through ClientStream and to
// workers through WorkerLink, implemented by the gRPC reactors in scheduler_server.cc, and asks
// the pure policy (scheduler/) what to admit and what to start.
//
// Delivery guarantees it maintains:
//  - every client stream of a rollout receives each chunk exactly once, in index order, from the
//    chunk it asked for (0 for Rollout, `from_chunk` for Attach);
//  - a rollout whose worker dies is re-queued with the same request and seed (up to
//    max_resumes) and continues on another worker; chunks already delivered are not sent again
//    (generation is deterministic, so the new worker's later chunks continue the same video);
//  - a bounded per-rollout buffer of recent chunks lets a client re-attach after a dropped
//    connection; with reattach_grace_s the rollout keeps running while no client is attached;
//  - resubmitting with the same (tenant, client_request_id) joins the existing rollout.
//
// Lock order: hub mutex -> reactor mutex. The hub calls ClientStream/WorkerLink methods with its
// mutex held; those must only queue work and never call back into the hub.
#ifndef WMSERVE_SERVER_ROLLOUT_HUB_H_
#define WMSERVE_SERVER_ROLLOUT_HUB_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include <grpcpp/support/status.h>
#include "scheduler/admission.h"
#include "scheduler/fair_share_policy.h"
#include "scheduler/queue_policy.h"
#include "scheduler/tenant_ledger.h"
#include "scheduler/worker_registry.h"
#include "server/metrics.h"
#include "server/request_validation.h"
#include "wmserve/v1/rollout.pb.h"
#include "wmserve/v1/worker.pb.h"

namespace wmserve::server {

struct SchedulerOptions {
  // Rollouts allowed to wait, per priority class (high, normal, low); the next one gets
  // RESOURCE_EXHAUSTED with a retry-after hint.
  std::array<size_t, scheduler::kNumPriorities> max_queued = {64, 256, 256};
  // Workers send a heartbeat this often; silent for `heartbeat_timeout` -> DEAD.
  absl::Duration heartbeat_interval = absl::Seconds(1);
  absl::Duration heartbeat_timeout = absl::Seconds(5);
  // DEAD workers stay visible in ListWorkers this long.
  absl::Duration dead_worker_retention = absl::Minutes(5);
  // Finished rollouts kept for GetRollout / Attach / idempotent Cancel and resubmit.
  size_t finished_rollouts_retained = 4096;
  // Models accepted (and queued) even while no worker serving them is connected, e.g. the
  // models the local workers will load. Others need a registered worker, or get NOT_FOUND.
  std::vector<std::string> known_models = {"warp"};
  RequestLimits limits;
  // A client that falls this far behind the stream is cut off with RESOURCE_EXHAUSTED.
  size_t max_client_backlog_bytes = 256u << 20;
  // If set, a Prometheus file_sd JSON file listing live workers' /metrics endpoints.
  std::string file_sd_path;
  // Per-rollout buffer of recent chunks for Attach; the init segment is always kept.
  size_t rollout_buffer_bytes = 64u << 20;
  // A finished rollout's buffer is kept this long for late re-attaches, then dropped.
  absl::Duration finished_buffer_retention = absl::Seconds(30);
  // Upper bound on a request's reattach_grace_s.
  absl::Duration max_reattach_grace = absl::Minutes(10);
  // Times a rollout may be moved to another worker after losing one.
  int max_resumes = 3;
  // A queued rollout whose model no live worker serves for this long fails UNAVAILABLE.
  absl::Duration no_worker_timeout = absl::Seconds(30);
  // A worker name lost this many times within `quarantine_window` is refused registration
  // until the window has passed (crash loops are not retried forever). 0 = never.
  int quarantine_after = 5;
  absl::Duration quarantine_window = absl::Minutes(10);
  // Fair share: aging step and tenant usage half-life; tenant weights by name (default 1).
  scheduler::FairShareOptions fair_share;
  std::map<std::string, double> tenant_weights;
};

// The client end of one Rollout/Attach RPC.
class ClientStream {
 public:
  virtual ~ClientStream() = default;
  // Queues an event for the client. Returns the bytes now waiting to be written.
  virtual size_t Send(v1::RolloutEvent event) = 0;
  // Finishes the RPC with `status` once queued events are written (at once if cancelled).
  virtual void Close(const grpc::Status& status) = 0;
};

// The scheduler end of one worker's Connect stream.
class WorkerLink {
 public:
  virtual ~WorkerLink() = default;
  virtual void Send(v1::SchedulerMessage message) = 0;
  // Ends the stream (the worker sees `status` and reconnects).
  virtual void Close(const grpc::Status& status) = 0;
};

class RolloutHub {
 public:
  RolloutHub(const SchedulerOptions& options, metrics::SchedulerMetrics* metrics);

  // --- clients ---------------------------------------------------------------------------------

  // Admits a validated request (or joins the rollout it duplicates) and attaches `client`,
  // which receives Accepted first. The hub then Send()s/Close()s on it until DetachClient().
  // Errors (nothing attached): NOT_FOUND unknown model, RESOURCE_EXHAUSTED (with retry-after),
  // DEADLINE_EXCEEDED (cannot finish by `deadline`), UNAVAILABLE (shutting down).
  absl::StatusOr<std::string> Submit(v1::RolloutRequest request, absl::Time deadline,
                                     ClientStream* client) ABSL_LOCKS_EXCLUDED(mu_);
  // Attaches `client` to an existing rollout from chunk `from_chunk` (replaying what is
  // buffered). NOT_FOUND, OUT_OF_RANGE (no longer buffered).
  absl::Status Attach(const std::string& id, uint32_t from_chunk, ClientStream* client)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The client cancelled or disconnected: detach it; the last one gone cancels the rollout
  // unless it asked for a re-attach grace period.
  void ClientGone(const std::string& id, ClientStream* client) ABSL_LOCKS_EXCLUDED(mu_);
  // The reactor is going away; never touch `client` again.
  void DetachClient(const std::string& id, ClientStream* client) ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<v1::RolloutState> Cancel(const std::string& id) ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<v1::RolloutStatus> Get(const std::string& id) ABSL_LOCKS_EXCLUDED(mu_);
  v1::ListWorkersResponse ListWorkers() ABSL_LOCKS_EXCLUDED(mu_);

  // --- workers ---------------------------------------------------------------------------------

  // Returns the worker id, or FAILED_PRECONDITION if the worker is quarantined.
  absl::StatusOr<std::string> RegisterWorker(const v1::Register& reg, WorkerLink* link)
      ABSL_LOCKS_EXCLUDED(mu_);
  void WorkerHeartbeat(const std::string& worker_id, const v1::Heartbeat& hb)
      ABSL_LOCKS_EXCLUDED(mu_);
  void WorkerUpdate(const std::string& worker_id, v1::RolloutUpdate update)
      ABSL_LOCKS_EXCLUDED(mu_);
  void WorkerDone(const std::string& worker_id, const v1::RolloutDone& done)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The worker's stream ended (crash, kill, network): resume or fail what it was running.
  void WorkerGone(const std::string& worker_id, WorkerLink* link, const std::string& reason)
      ABSL_LOCKS_EXCLUDED(mu_);

  // --- housekeeping ----------------------------------------------------------------------------

  void CountInvalidRequest() { metrics_->Rejected("invalid_argument"); }
  // Bytes queued in all client streams; reactors add and subtract, Tick() publishes.
  std::atomic<int64_t>& send_queue_bytes() { return send_queue_bytes_; }
  // Heartbeat expiry, deadlines, grace periods, no-worker timeouts, pruning; every ~100 ms.
  void Tick() ABSL_LOCKS_EXCLUDED(mu_);
  void StopAccepting() ABSL_LOCKS_EXCLUDED(mu_);
  bool WaitIdle(absl::Duration timeout) ABSL_LOCKS_EXCLUDED(mu_);
  void AbortAll(const std::string& reason) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Attached {
    ClientStream* stream;  // not owned; detached before the reactor is deleted
    uint32_t from_chunk;
  };
  struct Rollout {
    std::string id;
    std::string dedupe_key;  // tenant + client_request_id; empty if none
    v1::RolloutRequest request;  // kept whole until terminal: a resume sends it again
    scheduler::QueuedRollout queued;
    v1::RolloutState state = v1::ROLLOUT_STATE_QUEUED;
    std::vector<Attached> clients;
    std::string worker_id;
    absl::Time submitted = absl::InfinitePast();
    absl::Time started = absl::InfinitePast();
    absl::Time first_chunk = absl::InfinitePast();
    absl::Time last_chunk = absl::InfinitePast();
    absl::Time finished = absl::InfinitePast();
    absl::Time deadline = absl::InfiniteFuture();
    absl::Time orphaned_since = absl::InfinitePast();  // no client attached since
    absl::Time no_worker_since = absl::InfinitePast();
    absl::Duration grace;
    uint32_t frames_done = 0;
    uint32_t frames_total = 0;
    uint32_t chunks_sent = 0;  // chunks relayed so far = next index expected
    uint32_t previews_sent = 0;  // PREVIEW chunks relayed so far (live only, never buffered)
    uint64_t bytes_sent = 0;
    uint32_t resumes = 0;
    // Replay state for Attach: the init event, then the most recent chunks.
    std::unique_ptr<v1::RolloutEvent> init_event;
    std::deque<v1::RolloutEvent> buffer;
    size_t buffer_bytes = 0;
    std::unique_ptr<v1::RolloutEvent> final_event;
    absl::Status end_status;
  };

  absl::Status Reject(const std::string& reason, absl::Status status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Rollout* FindLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<std::string> KnownModelsLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool ModelKnownLocked(const std::string& model) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int ServingSlotsLocked(const std::string& model) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t StateBytesLocked(const std::string& model) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AttachLocked(Rollout& r, ClientStream* client, uint32_t from_chunk, bool existing)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void BroadcastLocked(Rollout& r, const v1::RolloutEvent& event)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void BufferLocked(Rollout& r, const v1::RolloutEvent& chunk_event)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DispatchLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EndLocked(Rollout& r, const absl::Status& status, const std::string& reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ResumeOrFailLocked(Rollout& r, const std::string& worker_id, const std::string& reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MarkDeadLocked(const std::string& worker_id, const std::string& reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SendDrainLocked(const std::string& worker_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateGaugesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WriteFileSdLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SchedulerOptions options_;
  metrics::SchedulerMetrics* const metrics_;
  const scheduler::FairSharePolicy policy_;
  const scheduler::AdmissionController admission_;

  absl::Mutex mu_;
  bool accepting_ ABSL_GUARDED_BY(mu_) = true;
  scheduler::RolloutQueue queue_ ABSL_GUARDED_BY(mu_);
  scheduler::TenantLedger ledger_ ABSL_GUARDED_BY(mu_);
  scheduler::SpeedEstimator speed_ ABSL_GUARDED_BY(mu_);
  scheduler::WorkerRegistry registry_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, WorkerLink*> links_ ABSL_GUARDED_BY(mu_);  // live streams only
  // Per-rollout device memory by model, as workers report it.
  std::map<std::string, uint64_t> state_bytes_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> ever_served_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Rollout> rollouts_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::string> by_dedupe_key_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> finished_order_ ABSL_GUARDED_BY(mu_);
  uint64_t rollout_counter_ ABSL_GUARDED_BY(mu_) = 0;
  int active_running_ ABSL_GUARDED_BY(mu_) = 0;
  size_t active_ ABSL_GUARDED_BY(mu_) = 0;
  std::string file_sd_written_ ABSL_GUARDED_BY(mu_);
  // Disconnect times per worker name, for quarantining crash-looping workers.
  std::map<std::string, std::deque<absl::Time>> deaths_by_name_ ABSL_GUARDED_BY(mu_);
  const std::string id_prefix_;
  std::atomic<int64_t> send_queue_bytes_{0};
};

}  // namespace wmserve::server

#endif  // WMSERVE_SERVER_ROLLOUT_HUB_H_
