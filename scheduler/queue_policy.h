// Queueing and dispatch policy. Pure: no threads, no IO, no clocks (time is a parameter).
//
// The scheduler process keeps rollouts in a RolloutQueue (bounded, arrival order) and asks a
// QueuePolicy, whenever something changes, which queued rollouts start now and where. The policy
// only returns a plan; the caller applies it. This keeps every decision unit-testable with a
// hand-built queue, hand-built worker slots and a fake clock.
#ifndef WMSERVE_SCHEDULER_QUEUE_POLICY_H_
#define WMSERVE_SCHEDULER_QUEUE_POLICY_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "scheduler/tenant_ledger.h"

namespace wmserve::scheduler {

// Priority classes, most urgent first. FairSharePolicy gives a lower class only capacity that no
// rollout of a higher class (after aging) can use.
enum class Priority { kHigh = 0, kNormal = 1, kLow = 2 };
inline constexpr int kNumPriorities = 3;
// 0 for kHigh .. kNumPriorities - 1 for kLow: an index for per-class arrays.
inline constexpr int PriorityIndex(Priority p) { return static_cast<int>(p); }
// "high", "normal", "low": for messages and metric labels.
const char* PriorityName(Priority p);

// A rollout waiting to start, as the policy sees it.
struct QueuedRollout {
  std::string rollout_id;
  std::string model;
  absl::Time enqueued_at = {};
  Priority priority = Priority::kNormal;
  std::string tenant = {};   // "" is the tenant "default" (see TenantKey)
  double tenant_weight = 1;  // its tenant's share relative to other tenants; <= 0 counts as 1
  absl::Time deadline = absl::InfiniteFuture();  // when the client stops waiting
  uint32_t num_frames = 0;   // frames the rollout will generate (its service cost)
  uint64_t state_bytes = 0;  // device memory it holds while running; 0 = negligible
  // Rollouts with equal non-empty batch keys may share a batched forward on a worker that
  // co-batches their model (same model, output size and model options); "" = never co-batched.
  std::string batch_key = {};
};

// The service a rollout costs its tenant when it starts, in the units TenantLedger counts:
// frames generated (at least 1, so frameless rollouts are not free). The hub charges this.
double ServiceCost(const QueuedRollout& rollout);

// A worker as the policy sees it: what it serves and how much more it can take.
struct WorkerSlots {
  static constexpr uint64_t kMemoryNotReported = UINT64_MAX;

  std::string worker_id;
  std::vector<std::string> models;
  int free_slots = 0;  // max_concurrent - running; <= 0 means full
  // Device memory not yet promised to running rollouts. kMemoryNotReported = no limit known:
  // memory never blocks this worker and is not debited.
  uint64_t free_memory_bytes = kMemoryNotReported;
  // The model weights are resident (no load before the first frame). Every worker that lists
  // a model serves it; placement prefers workers where it is resident.
  bool model_loaded = true;
  // Co-batching: rollouts per batched forward by model (absent or <= 1 = none), and the
  // rollouts running now by batch key (QueuedRollout::batch_key).
  std::map<std::string, int> max_batch = {};
  std::map<std::string, int> running_by_batch_key = {};
};

struct Assignment {
  std::string rollout_id;
  std::string worker_id;
  bool operator==(const Assignment& o) const {
    return rollout_id == o.rollout_id && worker_id == o.worker_id;
  }
};

// Capacity left on each worker while one plan is built: every policy places through this, so
// no plan gives a worker more rollouts than its free slots, a rollout to a worker that does not
// serve its model, or more state_bytes than its free memory (assignments earlier in the same
// plan included). That is what makes out-of-memory impossible by construction, provided the
// caller reports free_memory_bytes net of what running rollouts were promised.
class PlanCapacity {
 public:
  explicit PlanCapacity(const std::vector<WorkerSlots>& workers);

  // True if `worker` (an index into the workers given) can take `rollout` now.
  bool Fits(int worker, const QueuedRollout& rollout) const;
  // The worker that should take `rollout`, or -1 if none fits. Among those that fit prefer,
  // in order: the model resident (model_loaded); a worker where the rollout joins a co-batch
  // (compatible rollouts running, fewer than the model's max_batch), the fullest such batch
  // first (packing: a batch of n costs far less than n forwards); then most free slots
  // (spreading: rollouts that cannot share a forward should not share a device), most free
  // memory, first listed.
  int BestWorker(const QueuedRollout& rollout) const;
  // Compatible rollouts `worker` runs that `rollout` would share a batched forward with (0 if
  // its batch is full, the rollout has no batch key or the worker does not co-batch the model).
  int BatchMates(int worker, const QueuedRollout& rollout) const;
  // Debits one slot and rollout.state_bytes on `worker`; precondition Fits(worker, rollout).
  void Take(int worker, const QueuedRollout& rollout);
  // No worker has a free slot left.
  bool Exhausted() const { return total_free_slots_ == 0; }

  int free_slots(int worker) const { return free_slots_[worker]; }
  uint64_t free_memory_bytes(int worker) const { return free_memory_[worker]; }
  const std::string& worker_id(int worker) const { return (*workers_)[worker].worker_id; }

 private:
  const std::vector<WorkerSlots>* workers_;  // the caller's; outlives this plan-local object
  std::vector<int> free_slots_;
  std::vector<uint64_t> free_memory_;
  std::vector<std::map<std::string, int>> running_by_batch_key_;
  int total_free_slots_ = 0;
};

class QueuePolicy {
 public:
  virtual ~QueuePolicy() = default;
  // Returns the rollouts to start now, in start order. Must not assign more rollouts to a
  // worker than its free_slots, more state_bytes than its free_memory_bytes, a rollout to a
  // worker that does not serve its model, nor the same rollout twice (use PlanCapacity).
  // `queue` is in arrival order. `ledger` is the service each tenant received so far (the
  // caller charges ServiceCost() for every rollout it starts); policies may ignore it.
  virtual std::vector<Assignment> Schedule(const std::vector<QueuedRollout>& queue,
                                           const std::vector<WorkerSlots>& workers,
                                           const TenantLedger& ledger,
                                           absl::Time now) const = 0;
};

// First come, first served per model: walks the queue in arrival order and gives each rollout
// PlanCapacity::BestWorker (with every model resident and memory unreported: the serving worker
// with the most free slots, ties first listed). A rollout that fits no worker does not block
// rollouts behind it. Ignores priority, tenants and the ledger.
class FifoPolicy : public QueuePolicy {
 public:
  std::vector<Assignment> Schedule(const std::vector<QueuedRollout>& queue,
                                   const std::vector<WorkerSlots>& workers,
                                   const TenantLedger& ledger, absl::Time now) const override;
};

// Bounded queue in arrival order. Not thread-safe (the owner serialises access).
class RolloutQueue {
 public:
  explicit RolloutQueue(size_t capacity) : capacity_(capacity) {}

  // RESOURCE_EXHAUSTED when `capacity` rollouts are already waiting.
  absl::Status Push(QueuedRollout rollout);
  // Puts a rollout back at the head, ignoring the capacity: it was admitted once already (a
  // rollout resuming after its worker was lost must not be refused).
  void PushFront(QueuedRollout rollout);
  // Removes a rollout; false if it was not queued.
  bool Remove(const std::string& rollout_id);
  // 0-based position in arrival order, or -1 if not queued.
  int PositionOf(const std::string& rollout_id) const;

  const std::vector<QueuedRollout>& items() const { return items_; }
  size_t size() const { return items_.size(); }
  size_t capacity() const { return capacity_; }

 private:
  size_t capacity_;
  std::vector<QueuedRollout> items_;
};

}  // namespace wmserve::scheduler

#endif  // WMSERVE_SCHEDULER_QUEUE_POLICY_H_
