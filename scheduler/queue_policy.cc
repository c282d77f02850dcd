#include "scheduler/queue_policy.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace wmserve::scheduler {

std::vector<Assignment> FifoPolicy::Schedule(const std::vector<QueuedRollout>& queue,
                                             const std::vector<WorkerSlots>& workers,
                                             absl::Time /*now*/) const {
  std::vector<int> free(workers.size());
  for (size_t w = 0; w < workers.size(); ++w) free[w] = std::max(0, workers[w].free_slots);

  std::vector<Assignment> plan;
  for (const QueuedRollout& rollout : queue) {
    int best = -1;
    for (size_t w = 0; w < workers.size(); ++w) {
      if (free[w] == 0) continue;
      const auto& models = workers[w].models;
      if (std::find(models.begin(), models.end(), rollout.model) == models.end()) continue;
      if (best < 0 || free[w] > free[best]) best = static_cast<int>(w);
    }
    if (best < 0) continue;  // nothing free for this model; later models may still fit
    --free[best];
    plan.push_back({rollout.rollout_id, workers[best].worker_id});
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
