#include "scheduler/queue_policy.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace wmserve::scheduler {

const char* PriorityName(Priority p) {
  switch (p) {
    case Priority::kHigh: return "high";
    case Priority::kNormal: return "normal";
    case Priority::kLow: return "low";
  }
  return "unknown";
}

double ServiceCost(const QueuedRollout& rollout) {
  return std::max<double>(1.0, rollout.num_frames);
}

PlanCapacity::PlanCapacity(const std::vector<WorkerSlots>& workers) : workers_(&workers) {
  free_slots_.reserve(workers.size());
  free_memory_.reserve(workers.size());
  for (const WorkerSlots& w : workers) {
    free_slots_.push_back(std::max(0, w.free_slots));
    free_memory_.push_back(w.free_memory_bytes);
    running_by_batch_key_.push_back(w.running_by_batch_key);
    total_free_slots_ += free_slots_.back();
  }
}

bool PlanCapacity::Fits(int worker, const QueuedRollout& rollout) const {
  if (free_slots_[worker] == 0 || rollout.state_bytes > free_memory_[worker]) return false;
  const auto& models = (*workers_)[worker].models;
  return std::find(models.begin(), models.end(), rollout.model) != models.end();
}

int PlanCapacity::BatchMates(int worker, const QueuedRollout& rollout) const {
  if (rollout.batch_key.empty()) return 0;
  const WorkerSlots& w = (*workers_)[worker];
  const auto max = w.max_batch.find(rollout.model);
  if (max == w.max_batch.end() || max->second <= 1) return 0;
  const auto running = running_by_batch_key_[worker].find(rollout.batch_key);
  if (running == running_by_batch_key_[worker].end()) return 0;
  // Full batches of this key are not joined; a new one would start (no advantage).
  const int in_open_batch = running->second % max->second;
  return in_open_batch;
}

int PlanCapacity::BestWorker(const QueuedRollout& rollout) const {
  int best = -1;
  for (int w = 0; w < static_cast<int>(free_slots_.size()); ++w) {
    if (!Fits(w, rollout)) continue;
    if (best < 0) {
      best = w;
      continue;
    }
    // Lexicographic preference; strict comparisons keep the first listed on ties.
    const bool loaded = (*workers_)[w].model_loaded, best_loaded = (*workers_)[best].model_loaded;
    const int mates = BatchMates(w, rollout), best_mates = BatchMates(best, rollout);
    if (loaded != best_loaded) {
      if (loaded) best = w;
    } else if (mates != best_mates) {
      if (mates > best_mates) best = w;
    } else if (free_slots_[w] != free_slots_[best]) {
      if (free_slots_[w] > free_slots_[best]) best = w;
    } else if (free_memory_[w] > free_memory_[best]) {
      best = w;
    }
  }
  return best;
}

void PlanCapacity::Take(int worker, const QueuedRollout& rollout) {
  --free_slots_[worker];
  --total_free_slots_;
  if (!rollout.batch_key.empty()) ++running_by_batch_key_[worker][rollout.batch_key];
  if (free_memory_[worker] != WorkerSlots::kMemoryNotReported) {
    free_memory_[worker] -= rollout.state_bytes;
  }
}

std::vector<Assignment> FifoPolicy::Schedule(const std::vector<QueuedRollout>& queue,
                                             const std::vector<WorkerSlots>& workers,
                                             const TenantLedger& /*ledger*/,
                                             absl::Time /*now*/) const {
  PlanCapacity capacity(workers);
  std::vector<Assignment> plan;
  for (const QueuedRollout& rollout : queue) {
    if (capacity.Exhausted()) break;
    const int w = capacity.BestWorker(rollout);
    if (w < 0) continue;  // nothing fits this one; later rollouts may still fit
    capacity.Take(w, rollout);
    plan.push_back({rollout.rollout_id, capacity.worker_id(w)});
  }
  return plan;
}

absl::Status RolloutQueue::Push(QueuedRollout rollout) {
  if (items_.size() >= capacity_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("queue full: ", items_.size(), " rollouts waiting (limit ", capacity_, ")"));
  }
  items_.push_back(std::move(rollout));
  return absl::OkStatus();
}

void RolloutQueue::PushFront(QueuedRollout rollout) {
  items_.insert(items_.begin(), std::move(rollout));
}

bool RolloutQueue::Remove(const std::string& rollout_id) {
  auto it = std::find_if(items_.begin(), items_.end(),
                         [&](const QueuedRollout& r) { return r.rollout_id == rollout_id; });
  if (it == items_.end()) return false;
  items_.erase(it);
  return true;
}

int RolloutQueue::PositionOf(const std::string& rollout_id) const {
  for (size_t i = 0; i < items_.size(); ++i) {
    if (items_[i].rollout_id == rollout_id) return static_cast<int>(i);
  }
  return -1;
}

}  // namespace wmserve::scheduler
