// Whole-file read/write with errno-derived absl::Status, shared by the client library and wmctl.
#ifndef WMSERVE_CLIENT_FILE_IO_H_
#define WMSERVE_CLIENT_FILE_IO_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace wmserve::client {

// The file's bytes. Errors carry the errno's code (NOT_FOUND, PERMISSION_DENIED, ...) and read
// "<path>: cannot open: No such file or directory".
absl::StatusOr<std::string> ReadFileBytes(const std::string& path);

// Creates or truncates `path` and writes `bytes`.
absl::Status WriteFileBytes(const std::string& path, absl::string_view bytes);

}  // namespace wmserve::client

#endif  // WMSERVE_CLIENT_FILE_IO_H_
