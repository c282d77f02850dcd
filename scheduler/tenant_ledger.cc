#include "scheduler/tenant_ledger.h"

#include <cmath>

namespace wmserve::scheduler {

std::string TenantKey(const std::string& tenant) { return tenant.empty() ? "default" : tenant; }

double SanitizedWeight(double weight) {
  return std::isfinite(weight) && weight > 0 ? weight : 1.0;
}

TenantLedger::TenantLedger(absl::Duration half_life)
    : half_life_(half_life > absl::ZeroDuration() ? half_life : absl::InfiniteDuration()) {}

double TenantLedger::DecayedValue(const Entry& e, absl::Time now) const {
  if (half_life_ == absl::InfiniteDuration() || now <= e.at) return e.value;
  return e.value * std::exp2(-absl::FDivDuration(now - e.at, half_life_));
}

void TenantLedger::Charge(const std::string& tenant, double cost, absl::Time now) {
  if (!(cost > 0)) return;
  auto [it, inserted] = entries_.try_emplace(TenantKey(tenant));
  Entry& e = it->second;
  if (inserted) {
    e.at = now;
  } else if (now > e.at) {
    e.value = DecayedValue(e, now);
    e.at = now;
  }
  e.value += cost;
}

double TenantLedger::Usage(const std::string& tenant, absl::Time now) const {
  auto it = entries_.find(TenantKey(tenant));
  return it == entries_.end() ? 0.0 : DecayedValue(it->second, now);
}

double TenantLedger::NormalizedUsage(const std::string& tenant, double weight,
                                     absl::Time now) const {
  return Usage(tenant, now) / SanitizedWeight(weight);
}

void TenantLedger::Prune(absl::Time now, double threshold) {
  absl::erase_if(entries_,
                 [&](const auto& kv) { return DecayedValue(kv.second, now) < threshold; });
}

}  // namespace wmserve::scheduler
