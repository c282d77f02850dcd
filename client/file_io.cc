#include "client/file_io.h"

#include <cerrno>
#include <cstdio>
#include <memory>

#include "absl/strings/str_cat.h"

namespace wmserve::client {
namespace {

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

absl::Status ErrnoError(int error_number, const std::string& path, absl::string_view what) {
  return absl::ErrnoToStatus(error_number, absl::StrCat(path, ": ", what));
}

}  // namespace

absl::StatusOr<std::string> ReadFileBytes(const std::string& path) {
  FilePtr file(std::fopen(path.c_str(), "rb"));
  if (file == nullptr) return ErrnoError(errno, path, "cannot open");
  std::string bytes;
  char buffer[1 << 16];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), file.get())) > 0) bytes.append(buffer, n);
  if (std::ferror(file.get())) return ErrnoError(errno, path, "read failed");
  return bytes;
}

absl::Status WriteFileBytes(const std::string& path, absl::string_view bytes) {
  FilePtr file(std::fopen(path.c_str(), "wb"));
  if (file == nullptr) return ErrnoError(errno, path, "cannot create");
  if (std::fwrite(bytes.data(), 1, bytes.size(), file.get()) != bytes.size()) {
    return ErrnoError(errno, path, "write failed");
  }
  // fclose flushes; a full disk can surface only here.
  if (std::fclose(file.release()) != 0) return ErrnoError(errno, path, "write failed");
  return absl::OkStatus();
}

}  // namespace wmserve::client
