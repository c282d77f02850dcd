// Priority classes with aging, and weighted fair sharing between tenants inside a class.
// Pure: a plan is a function of (queue, worker capacity, tenant ledger, now).
//
// Model. Classes are served in strict order, with aging: a rollout that has waited
// N * aging_step counts N classes higher (capped at kHigh), and a class competes at the level of
// its longest-waiting rollout. The classes at the most urgent level form the tier that gets the
// next slot. Inside the tier, tenants share by weight: the next rollout comes from the tenant
// with the least usage / weight (usage: decayed service in TenantLedger plus what this plan
// already started); within that tenant, its most urgent rollout (aged class), then arrival.
// Over a long run with every tenant backlogged, service (frames started) divides in proportion
// to the weights; a tenant asking for less than its share gets the first slot that frees after
// it submits. This is weighted fair queuing on a decaying service history.
//
// Why aging lifts the whole class rather than only the old rollout: if aged rollouts alone
// moved up, a flooding tenant's old backlog would outrank another tenant's fresh rollouts of
// the same class, and the light tenant would wait about one aging_step however light it is.
// Lifting the class keeps every rollout of a class on the same footing as its peers, and
// fairness inside the class intact.
//
// Starvation bound. A rollout of class c that has waited PriorityIndex(c) * aging_step counts
// as kHigh and keeps its class in the top tier for as long as it waits. There, only its own
// tenant's rollouts of that tier queued before it, and tenants with less usage / weight, go
// first; a flooding tenant's usage grows with every start, so under a flood of higher-class
// work from one tenant at equal weight, a lower-class rollout of another tenant starts within
// 2 * aging_step plus one rollout duration.
//
// Capacity. Placement goes through PlanCapacity (slots, model, memory), so plans never
// over-commit a worker. A rollout that fits no worker is skipped for the rest of the plan: it
// does not block rollouts behind it, even in its own tenant and class (they may need another
// model or less memory), and no longer lifts its class. This is work-conserving, not
// reserving: a large rollout can be overtaken repeatedly by small ones while memory stays
// fragmented; aging does not change that.
#ifndef WMSERVE_SCHEDULER_FAIR_SHARE_POLICY_H_
#define WMSERVE_SCHEDULER_FAIR_SHARE_POLICY_H_

#include <vector>

#include "absl/time/time.h"
#include "scheduler/queue_policy.h"
#include "scheduler/tenant_ledger.h"

namespace wmserve::scheduler {

struct FairShareOptions {
  // A rollout that has waited N * aging_step counts as N classes higher, capped at kHigh, and
  // lifts its class with it (see the file comment). absl::InfiniteDuration() (or any
  // non-positive value) disables aging: classes are strict.
  absl::Duration aging_step = absl::Seconds(30);
  // Half-life of the tenant service history (the ledger from NewLedger()). Longer remembers
  // bursts longer; shorter lets a tenant returning from idle catch up sooner.
  absl::Duration usage_half_life = TenantLedger::kDefaultHalfLife;
};

// `rollout.priority` raised by floor((now - enqueued_at) / aging_step) classes, capped at kHigh.
// No aging when aging_step is non-positive or infinite.
Priority EffectivePriority(const QueuedRollout& rollout, absl::Duration aging_step,
                           absl::Time now);

class FairSharePolicy : public QueuePolicy {
 public:
  explicit FairSharePolicy(FairShareOptions options = {}) : options_(options) {}

  // An empty ledger with the configured half-life; the caller keeps it and Charge()s
  // ServiceCost(rollout) to TenantKey(rollout.tenant) for every rollout it starts.
  TenantLedger NewLedger() const { return TenantLedger(options_.usage_half_life); }

  // Start order: the most urgent tier of classes (after aging), then the tenant's normalized
  // usage (ledger plus this plan), then the rollout's aged class, then arrival. Ties between
  // tenants go the same way. See the file comment.
  std::vector<Assignment> Schedule(const std::vector<QueuedRollout>& queue,
                                   const std::vector<WorkerSlots>& workers,
                                   const TenantLedger& ledger, absl::Time now) const override;

  const FairShareOptions& options() const { return options_; }

 private:
  FairShareOptions options_;
};

}  // namespace wmserve::scheduler

#endif  // WMSERVE_SCHEDULER_FAIR_SHARE_POLICY_H_
