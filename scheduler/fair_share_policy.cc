#include "scheduler/fair_share_policy.h"

#include <algorithm>
#include <array>
#include <string>

#include "absl/container/flat_hash_map.h"

namespace wmserve::scheduler {
namespace {

struct TenantState {
  double usage = 0;    // ledger usage at `now`
  double planned = 0;  // ServiceCost of what this plan already started for the tenant
};

// The rollouts of one tenant in one requested class, in arrival order (queue indices).
struct Group {
  int tenant = 0;
  int klass = 0;  // PriorityIndex of the requested class
  std::vector<int> members;
  size_t next = 0;  // members before this one were started or skipped in this plan

  bool empty() const { return next == members.size(); }
  int head() const { return members[next]; }
};

}  // namespace

Priority EffectivePriority(const QueuedRollout& rollout, absl::Duration aging_step,
                           absl::Time now) {
  const absl::Duration waited = now - rollout.enqueued_at;
  if (aging_step <= absl::ZeroDuration() || aging_step == absl::InfiniteDuration() ||
      waited < aging_step) {
    return rollout.priority;
  }
  absl::Duration remainder;  // IDivDuration requires somewhere to write it
  const int64_t steps = absl::IDivDuration(waited, aging_step, &remainder);
  const int64_t klass = std::max<int64_t>(0, PriorityIndex(rollout.priority) - steps);
  return static_cast<Priority>(klass);
}

std::vector<Assignment> FairSharePolicy::Schedule(const std::vector<QueuedRollout>& queue,
                                                  const std::vector<WorkerSlots>& workers,
                                                  const TenantLedger& ledger,
                                                  absl::Time now) const {
  PlanCapacity capacity(workers);
  std::vector<Assignment> plan;
  if (queue.empty() || capacity.Exhausted()) return plan;

  // 1. Group the queue by (requested class, tenant); groups keep arrival order, so a group's
  // head is its longest-waiting rollout. Each rollout's own aged class is fixed for the plan.
  absl::flat_hash_map<std::string, int> tenant_index;
  std::vector<TenantState> tenants;
  std::vector<Group> groups;
  absl::flat_hash_map<int64_t, int> group_index;  // tenant * kNumPriorities + class -> group
  std::vector<int> aged(queue.size());            // PriorityIndex(EffectivePriority(rollout))
  for (int i = 0; i < static_cast<int>(queue.size()); ++i) {
    const QueuedRollout& r = queue[i];
    std::string key = TenantKey(r.tenant);
    auto [t, new_tenant] = tenant_index.try_emplace(key, static_cast<int>(tenants.size()));
    if (new_tenant) tenants.push_back({ledger.Usage(key, now), 0});
    const int klass = PriorityIndex(r.priority);
    auto [g, new_group] = group_index.try_emplace(
        int64_t{t->second} * kNumPriorities + klass, static_cast<int>(groups.size()));
    if (new_group) groups.push_back({t->second, klass, {}, 0});
    groups[g->second].members.push_back(i);
    aged[i] = PriorityIndex(EffectivePriority(r, options_.aging_step, now));
  }

  // 2. Repeatedly start one rollout until capacity or candidates run out:
  //  a. Each class competes at the aged class of its longest-waiting remaining rollout; the
  //     classes at the most urgent level form the tier.
  //  b. In the tier, the least normalized usage (ledger + this plan) picks the tenant; within
  //     the tenant, the most urgent aged class, then arrival.
  //  c. The choice goes to the best worker. If it fits none it is skipped for the rest of the
  //     plan (capacity only shrinks, so it cannot fit later) and its group's next one moves up.
  auto normalized = [&](const Group& g) {
    const TenantState& t = tenants[g.tenant];
    return (t.usage + t.planned) / SanitizedWeight(queue[g.head()].tenant_weight);
  };
  while (!capacity.Exhausted()) {
    std::array<int, kNumPriorities> class_level;
    class_level.fill(kNumPriorities);  // no remaining rollout
    for (const Group& g : groups) {
      if (!g.empty()) class_level[g.klass] = std::min(class_level[g.klass], aged[g.head()]);
    }
    const int tier = *std::min_element(class_level.begin(), class_level.end());
    if (tier == kNumPriorities) break;

    int best = -1;
    double best_usage = 0;
    for (int g = 0; g < static_cast<int>(groups.size()); ++g) {
      if (groups[g].empty() || class_level[groups[g].klass] != tier) continue;
      const double usage = normalized(groups[g]);
      if (best >= 0) {
        const int head = groups[g].head(), best_head = groups[best].head();
        if (usage != best_usage) {
          if (usage > best_usage) continue;
        } else if (aged[head] != aged[best_head]) {
          if (aged[head] > aged[best_head]) continue;
        } else if (head > best_head) {
          continue;
        }
      }
      best = g;
      best_usage = usage;
    }
    Group& group = groups[best];
    const QueuedRollout& rollout = queue[group.head()];
    ++group.next;
    const int w = capacity.BestWorker(rollout);
    if (w < 0) continue;
    capacity.Take(w, rollout);
    tenants[group.tenant].planned += ServiceCost(rollout);
    plan.push_back({rollout.rollout_id, capacity.worker_id(w)});
  }
  return plan;
}

}  // namespace wmserve::scheduler
