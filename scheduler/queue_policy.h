// Queueing and dispatch policy. Pure: no threads, no IO, no clocks (time is a parameter).
//
// The scheduler process keeps rollouts in a RolloutQueue (bounded, arrival order) and asks a
// QueuePolicy, whenever something changes, which queued rollouts start now and where. The policy
// only returns a plan; the caller applies it. This keeps every decision unit-testable with a
// hand-built queue, hand-built worker slots and a fake clock.
#ifndef WMSERVE_SCHEDULER_QUEUE_POLICY_H_
#define WMSERVE_SCHEDULER_QUEUE_POLICY_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace wmserve::scheduler {

struct QueuedRollout {
  std::string rollout_id;
  std::string model;
  absl::Time enqueued_at;
  int priority = 0;    // reserved for the priority policy; FIFO ignores it
  std::string tenant;  // reserved for fair queuing; FIFO ignores it
};

// A worker as the policy sees it: what it serves and how many more rollouts it can take.
struct WorkerSlots {
  std::string worker_id;
  std::vector<std::string> models;
  int free_slots = 0;  // max_concurrent - running; <= 0 means full
};

struct Assignment {
  std::string rollout_id;
  std::string worker_id;
  bool operator==(const Assignment& o) const {
    return rollout_id == o.rollout_id && worker_id == o.worker_id;
  }
};

class QueuePolicy {
 public:
  virtual ~QueuePolicy() = default;
  // Returns the rollouts to start now, in start order. Must not assign more rollouts to a
  // worker than its free_slots, nor a rollout to a worker that does not serve its model, nor
  // the same rollout twice. `queue` is in arrival order.
  virtual std::vector<Assignment> Schedule(const std::vector<QueuedRollout>& queue,
                                           const std::vector<WorkerSlots>& workers,
                                           absl::Time now) const = 0;
};

// First come, first served per model: walks the queue in arrival order and gives each rollout
// the serving worker with the most free slots (ties: first listed). A rollout whose model has
// no free worker does not block rollouts of other models behind it.
class FifoPolicy : public QueuePolicy {
 public:
  std::vector<Assignment> Schedule(const std::vector<QueuedRollout>& queue,
                                   const std::vector<WorkerSlots>& workers,
                                   absl::Time now) const override;
};

// Bounded queue in arrival order. Not thread-safe (the owner serialises access).
class RolloutQueue {
 public:
  explicit RolloutQueue(size_t capacity) : capacity_(capacity) {}

  // RESOURCE_EXHAUSTED when `capacity` rollouts are already waiting.
  absl::Status Push(QueuedRollout rollout);
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
