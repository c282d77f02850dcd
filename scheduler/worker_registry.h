// The scheduler's view of its workers: identity, capability, load and liveness.
// Pure state machine; the caller supplies the time. Not thread-safe (the owner serialises).
//
// Lifecycle of an entry:  LOADING -> READY <-> BUSY -> DEAD   (DRAINING on request)
// A worker becomes DEAD when its stream breaks (MarkDead) or when no heartbeat arrived for
// `heartbeat_timeout` (ExpireSilent). Dead entries stay listed for `dead_retention` so
// operators can see them, then disappear.
#ifndef WMSERVE_SCHEDULER_WORKER_REGISTRY_H_
#define WMSERVE_SCHEDULER_WORKER_REGISTRY_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "scheduler/queue_policy.h"

namespace wmserve::scheduler {

enum class WorkerState { kLoading, kReady, kBusy, kDraining, kDead };
const char* WorkerStateName(WorkerState state);

struct WorkerDescription {
  std::string name;  // worker's own name (e.g. "local-0"); informational
  std::string device;
  std::string host;
  std::vector<std::string> models;
  int max_concurrent = 1;
  uint64_t memory_total_bytes = 0;
  uint64_t memory_free_bytes = 0;
  // Device memory the worker sets aside for rollout state once the model is loaded and warm:
  // the budget the scheduler promises rollouts' state_bytes against. 0 = not reported (memory
  // never limits placement on this worker).
  uint64_t rollout_memory_bytes = 0;
  std::string metrics_endpoint;
  // Co-batching: rollouts per batched forward by model (reported once loaded; absent = none).
  std::map<std::string, int> max_batch;
  uint32_t pid = 0;
  bool ready = false;  // warm-up finished
};

struct WorkerRecord {
  std::string id;
  WorkerDescription description;
  WorkerState state = WorkerState::kLoading;
  std::set<std::string> running;  // rollout ids assigned and not yet done
  // state_bytes promised to each running rollout (same keys as `running`), and their sum.
  std::map<std::string, uint64_t> promised;
  uint64_t promised_bytes = 0;
  // Batch key of each running rollout that has one, and the running count per key.
  std::map<std::string, std::string> batch_keys;
  std::map<std::string, int> running_by_batch_key;
  absl::Time registered_at;
  absl::Time last_heartbeat;
  absl::Time died_at = absl::InfinitePast();
  std::string death_reason;
};

class WorkerRegistry {
 public:
  // Returns the new worker's id ("w-1", "w-2", ...; never reused within a process).
  std::string Add(const WorkerDescription& description, absl::Time now);
  // Heartbeat from the worker; `ready` true once warm-up finished. Ignored for dead workers.
  void Heartbeat(const std::string& id, bool ready, uint64_t memory_free_bytes, absl::Time now);
  void SetDraining(const std::string& id);
  // Sets the worker's rollout memory budget (see WorkerDescription::rollout_memory_bytes).
  void SetRolloutMemoryBudget(const std::string& id, uint64_t bytes);
  // Sets how many rollouts of `model` the worker runs in one batched forward.
  void SetMaxBatch(const std::string& id, const std::string& model, int max_batch);
  // Marks the worker dead and returns the rollouts it was running (now orphaned).
  std::set<std::string> MarkDead(const std::string& id, const std::string& reason, absl::Time now);
  // Workers alive but silent for longer than `timeout`; the caller then MarkDead()s them.
  std::vector<std::string> Silent(absl::Time now, absl::Duration timeout) const;
  // Forgets dead workers older than `retention`.
  void Prune(absl::Time now, absl::Duration retention);

  // Assign/finish a rollout on a worker; updates READY/BUSY. `state_bytes` is the memory the
  // rollout was promised (QueuedRollout::state_bytes); it is returned by RemoveRollout/MarkDead.
  // `batch_key` is QueuedRollout::batch_key (co-batch packing).
  void AddRollout(const std::string& id, const std::string& rollout_id,
                  uint64_t state_bytes = 0, const std::string& batch_key = "");
  void RemoveRollout(const std::string& id, const std::string& rollout_id);

  const WorkerRecord* Find(const std::string& id) const;
  const std::map<std::string, WorkerRecord>& workers() const { return workers_; }
  // Slots of workers that can take work (READY or BUSY with room), for the policy.
  // free_memory_bytes is rollout_memory_bytes minus what running rollouts were promised, or
  // WorkerSlots::kMemoryNotReported when the worker reported no budget.
  std::vector<WorkerSlots> SchedulableSlots() const;
  // True if any live worker (any state but DEAD) lists `model`.
  bool AnyLiveWorkerServes(const std::string& model) const;

 private:
  void UpdateLoadState(WorkerRecord& w);
  std::map<std::string, WorkerRecord> workers_;
  uint64_t next_id_ = 1;
};

}  // namespace wmserve::scheduler

#endif  // WMSERVE_SCHEDULER_WORKER_REGISTRY_H_
