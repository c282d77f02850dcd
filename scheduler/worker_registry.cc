#include "scheduler/worker_registry.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace wmserve::scheduler {

const char* WorkerStateName(WorkerState state) {
  switch (state) {
    case WorkerState::kLoading: return "LOADING";
    case WorkerState::kReady: return "READY";
    case WorkerState::kBusy: return "BUSY";
    case WorkerState::kDraining: return "DRAINING";
    case WorkerState::kDead: return "DEAD";
  }
  return "UNKNOWN";
}

std::string WorkerRegistry::Add(const WorkerDescription& description, absl::Time now) {
  std::string id = absl::StrCat("w-", next_id_++);
  WorkerRecord& w = workers_[id];
  w.id = id;
  w.description = description;
  w.description.max_concurrent = std::max(1, description.max_concurrent);
  w.registered_at = now;
  w.last_heartbeat = now;
  w.state = description.ready ? WorkerState::kReady : WorkerState::kLoading;
  return id;
}

void WorkerRegistry::Heartbeat(const std::string& id, bool ready, uint64_t memory_free_bytes,
                               absl::Time now) {
  auto it = workers_.find(id);
  if (it == workers_.end() || it->second.state == WorkerState::kDead) return;
  WorkerRecord& w = it->second;
  w.last_heartbeat = now;
  w.description.memory_free_bytes = memory_free_bytes;
  if (ready && !w.description.ready) {
    w.description.ready = true;
    if (w.state == WorkerState::kLoading) w.state = WorkerState::kReady;
  }
  UpdateLoadState(w);
}

void WorkerRegistry::SetRolloutMemoryBudget(const std::string& id, uint64_t bytes) {
  auto it = workers_.find(id);
  if (it != workers_.end()) it->second.description.rollout_memory_bytes = bytes;
}

void WorkerRegistry::SetDraining(const std::string& id) {
  auto it = workers_.find(id);
  if (it != workers_.end() && it->second.state != WorkerState::kDead) {
    it->second.state = WorkerState::kDraining;
  }
}

std::set<std::string> WorkerRegistry::MarkDead(const std::string& id, const std::string& reason,
                                               absl::Time now) {
  auto it = workers_.find(id);
  if (it == workers_.end() || it->second.state == WorkerState::kDead) return {};
  WorkerRecord& w = it->second;
  w.state = WorkerState::kDead;
  w.died_at = now;
  w.death_reason = reason;
  std::set<std::string> orphans;
  orphans.swap(w.running);
  w.promised.clear();
  w.promised_bytes = 0;
  w.batch_keys.clear();
  w.running_by_batch_key.clear();
  return orphans;
}

std::vector<std::string> WorkerRegistry::Silent(absl::Time now, absl::Duration timeout) const {
  std::vector<std::string> silent;
  for (const auto& [id, w] : workers_) {
    if (w.state != WorkerState::kDead && now - w.last_heartbeat > timeout) silent.push_back(id);
  }
  return silent;
}

void WorkerRegistry::Prune(absl::Time now, absl::Duration retention) {
  for (auto it = workers_.begin(); it != workers_.end();) {
    if (it->second.state == WorkerState::kDead && now - it->second.died_at > retention) {
      it = workers_.erase(it);
    } else {
      ++it;
    }
  }
}

void WorkerRegistry::AddRollout(const std::string& id, const std::string& rollout_id,
                                uint64_t state_bytes, const std::string& batch_key) {
  auto it = workers_.find(id);
  if (it == workers_.end()) return;
  WorkerRecord& w = it->second;
  if (!w.running.insert(rollout_id).second) return;
  if (state_bytes > 0) {
    w.promised[rollout_id] = state_bytes;
    w.promised_bytes += state_bytes;
  }
  if (!batch_key.empty()) {
    w.batch_keys[rollout_id] = batch_key;
    ++w.running_by_batch_key[batch_key];
  }
  UpdateLoadState(w);
}

void WorkerRegistry::SetMaxBatch(const std::string& id, const std::string& model, int max_batch) {
  auto it = workers_.find(id);
  if (it == workers_.end()) return;
  it->second.description.max_batch[model] = max_batch;
}

void WorkerRegistry::RemoveRollout(const std::string& id, const std::string& rollout_id) {
  auto it = workers_.find(id);
  if (it == workers_.end()) return;
  WorkerRecord& w = it->second;
  w.running.erase(rollout_id);
  if (auto p = w.promised.find(rollout_id); p != w.promised.end()) {
    w.promised_bytes -= p->second;
    w.promised.erase(p);
  }
  if (auto k = w.batch_keys.find(rollout_id); k != w.batch_keys.end()) {
    if (--w.running_by_batch_key[k->second] <= 0) w.running_by_batch_key.erase(k->second);
    w.batch_keys.erase(k);
  }
  UpdateLoadState(w);
}

void WorkerRegistry::UpdateLoadState(WorkerRecord& w) {
  if (w.state != WorkerState::kReady && w.state != WorkerState::kBusy) return;
  const bool full = static_cast<int>(w.running.size()) >= w.description.max_concurrent;
  w.state = full ? WorkerState::kBusy : WorkerState::kReady;
}

const WorkerRecord* WorkerRegistry::Find(const std::string& id) const {
  auto it = workers_.find(id);
  return it == workers_.end() ? nullptr : &it->second;
}

std::vector<WorkerSlots> WorkerRegistry::SchedulableSlots() const {
  std::vector<WorkerSlots> slots;
  for (const auto& [id, w] : workers_) {
    if (w.state != WorkerState::kReady && w.state != WorkerState::kBusy) continue;
    const int free = w.description.max_concurrent - static_cast<int>(w.running.size());
    if (free <= 0) continue;
    const uint64_t budget = w.description.rollout_memory_bytes;
    const uint64_t free_memory = budget == 0 ? WorkerSlots::kMemoryNotReported
                                             : budget - std::min(budget, w.promised_bytes);
    slots.push_back({id, w.description.models, free, free_memory, /*model_loaded=*/true,
                     w.description.max_batch, w.running_by_batch_key});
  }
  return slots;
}

bool WorkerRegistry::AnyLiveWorkerServes(const std::string& model) const {
  for (const auto& [id, w] : workers_) {
    if (w.state == WorkerState::kDead) continue;
    const auto& m = w.description.models;
    if (std::find(m.begin(), m.end(), model) != m.end()) return true;
  }
  return false;
}

}  // namespace wmserve::scheduler
