// File: exception types of the SANA-WM LibTorch port (worker/models/sana/).
//
// The port depends on LibTorch and the standard library only, so it reports errors by throwing.
// The adapter at the Model boundary maps them to absl::Status:
//   InvalidInputError  -> INVALID_ARGUMENT  (a request the model cannot use: frame counts,
//                                             non-finite poses, bad intrinsics, ...)
//   ConfigError        -> INVALID_ARGUMENT  (at load time: FAILED_PRECONDITION if preferred)
//   RolloutCancelled   -> CANCELLED
//   anything else      -> INTERNAL          (std::runtime_error, c10::Error, SafetensorsError)
#ifndef WMSERVE_WORKER_MODELS_SANA_ERRORS_H_
#define WMSERVE_WORKER_MODELS_SANA_ERRORS_H_

#include <stdexcept>

namespace wmserve::worker::sana {

// A caller-supplied input the model cannot use. The message names the offending field.
class InvalidInputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A model configuration that is malformed or violates a model constraint.
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A rollout stopped because its step callback returned false (rollout.h). Thrown before the
// next denoiser forward; the rollout object must not be used afterwards.
class RolloutCancelled : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace wmserve::worker::sana

#endif  // WMSERVE_WORKER_MODELS_SANA_ERRORS_H_
