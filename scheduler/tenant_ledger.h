// Per-tenant service history for fair queuing. Pure value type: no clock, no threads.
//
// Model: each tenant has a usage number, the service it received (in cost units, frames for the
// scheduler) with every past charge decayed exponentially by its age:
//
//   usage(t) = sum over charges (c_i at t_i <= t) of  c_i * 2^(-(t - t_i) / half_life)
//
// The fair-share policy starts next the tenant with the least usage / weight. Decay bounds the
// memory of the system: a tenant that was idle for a few half-lives is treated as new, and a
// tenant that received a lot long ago is not punished for it now. With an infinite half-life the
// ledger is plain cumulative service (classic weighted fair queuing with unbounded memory).
//
// Storage is one (value, time of last charge) pair per tenant; decay is applied lazily. Time is
// a parameter. A charge or query at a time earlier than the tenant's last charge decays nothing
// (a clock that steps back never inflates usage). Not thread-safe (the owner serialises).
#ifndef WMSERVE_SCHEDULER_TENANT_LEDGER_H_
#define WMSERVE_SCHEDULER_TENANT_LEDGER_H_

#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"

namespace wmserve::scheduler {

// The tenant a request with this tenant field belongs to: "" is the tenant "default".
std::string TenantKey(const std::string& tenant);

// A tenant weight as the policy uses it: non-positive or non-finite weights count as 1.
double SanitizedWeight(double weight);

class TenantLedger {
 public:
  static constexpr absl::Duration kDefaultHalfLife = absl::Minutes(5);

  // `half_life` > 0; absl::InfiniteDuration() keeps usage forever. A non-positive half-life is
  // treated as infinite.
  explicit TenantLedger(absl::Duration half_life = kDefaultHalfLife);

  // Adds `cost` (>= 0; negative costs are ignored) to `tenant`'s usage at time `now`.
  void Charge(const std::string& tenant, double cost, absl::Time now);

  // Decayed usage of `tenant` at `now`; 0 for a tenant never charged.
  double Usage(const std::string& tenant, absl::Time now) const;

  // Usage(tenant, now) / SanitizedWeight(weight): the number fair queuing compares.
  double NormalizedUsage(const std::string& tenant, double weight, absl::Time now) const;

  // Forgets tenants whose usage at `now` is below `threshold`, so the map does not grow with
  // every tenant name ever seen. Forgetting one changes its usage by less than `threshold`.
  void Prune(absl::Time now, double threshold);

  size_t tenants() const { return entries_.size(); }
  absl::Duration half_life() const { return half_life_; }

 private:
  struct Entry {
    double value = 0;  // usage as of `at`
    absl::Time at;
  };
  double DecayedValue(const Entry& e, absl::Time now) const;

  absl::Duration half_life_;
  absl::flat_hash_map<std::string, Entry> entries_;
};

}  // namespace wmserve::scheduler

#endif  // WMSERVE_SCHEDULER_TENANT_LEDGER_H_
