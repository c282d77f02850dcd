// absl::Status <-> grpc::Status, and the RETURN_IF_ERROR / ASSIGN_OR_RETURN helpers.
// Modules return absl::Status; conversion to grpc::Status happens once, at the RPC edge.
#ifndef WMSERVE_SERVER_STATUS_UTIL_H_
#define WMSERVE_SERVER_STATUS_UTIL_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/optional.h"

namespace wmserve {

// Carries a retry-after payload (see WithRetryAfter) into the standard gRPC rich-error trailer
// as google.rpc.RetryInfo.
grpc::Status ToGrpcStatus(const absl::Status& status);
// Attaches a retry-after hint to `status` (RESOURCE_EXHAUSTED, UNAVAILABLE).
absl::Status WithRetryAfter(absl::Status status, absl::Duration retry_after);
// The hint from a grpc::Status's details, if any (client side).
absl::optional<absl::Duration> RetryAfter(const grpc::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);
// Status codes share numbering between gRPC and Abseil; these convert the raw integer used in
// proto messages (RolloutDone.status_code).
absl::Status StatusFromCode(int code, const std::string& message);

}  // namespace wmserve

#define WMSERVE_STATUS_CONCAT_INNER_(a, b) a##b
#define WMSERVE_STATUS_CONCAT_(a, b) WMSERVE_STATUS_CONCAT_INNER_(a, b)

#define RETURN_IF_ERROR(expr)                          \
  do {                                                 \
    ::absl::Status wmserve_status_ = (expr);           \
    if (!wmserve_status_.ok()) return wmserve_status_; \
  } while (0)

#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL_(WMSERVE_STATUS_CONCAT_(wmserve_statusor_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                           \
  if (!tmp.ok()) return tmp.status();          \
  lhs = std::move(tmp).value()

#endif  // WMSERVE_SERVER_STATUS_UTIL_H_
