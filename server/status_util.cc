#include "server/status_util.h"

#include <algorithm>
#include <string>

#include "google/rpc/status.pb.h"

namespace wmserve {

namespace {
constexpr char kRetryInfoType[] = "type.googleapis.com/google.rpc.RetryInfo";
}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const auto code = static_cast<grpc::StatusCode>(status.code());
  absl::optional<absl::Cord> retry = status.GetPayload(kRetryInfoType);
  if (!retry) return grpc::Status(code, std::string(status.message()));
  google::rpc::Status details;
  details.set_code(static_cast<int>(status.code()));
  details.set_message(std::string(status.message()));
  google::protobuf::Any* any = details.add_details();
  any->set_type_url(kRetryInfoType);
  any->set_value(std::string(*retry));
  return grpc::Status(code, std::string(status.message()), details.SerializeAsString());
}

absl::Status WithRetryAfter(absl::Status status, absl::Duration retry_after) {
  google::rpc::RetryInfo info;
  const int64_t ms = std::max<int64_t>(1, absl::ToInt64Milliseconds(retry_after));
  info.mutable_retry_delay()->set_seconds(ms / 1000);
  info.mutable_retry_delay()->set_nanos(static_cast<int32_t>((ms % 1000) * 1000000));
  status.SetPayload(kRetryInfoType, absl::Cord(info.SerializeAsString()));
  return status;
}

absl::optional<absl::Duration> RetryAfter(const grpc::Status& status) {
  if (status.error_details().empty()) return absl::nullopt;
  google::rpc::Status details;
  if (!details.ParseFromString(status.error_details())) return absl::nullopt;
  for (const auto& any : details.details()) {
    google::rpc::RetryInfo info;
    if (any.type_url() == kRetryInfoType && info.ParseFromString(any.value())) {
      return absl::Seconds(info.retry_delay().seconds()) +
             absl::Nanoseconds(info.retry_delay().nanos());
    }
  }
  return absl::nullopt;
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

absl::Status StatusFromCode(int code, const std::string& message) {
  if (code == 0) return absl::OkStatus();
  if (code < 0 || code > 16) code = static_cast<int>(absl::StatusCode::kUnknown);
  return absl::Status(static_cast<absl::StatusCode>(code), message);
}

}  // namespace wmserve
