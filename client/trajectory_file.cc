#include "client/trajectory_file.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "client/file_io.h"
#include "google/protobuf/util/json_util.h"

namespace wmserve::client {
namespace {

// 1-based line and column of byte `offset` in `text`.
std::string LineColumn(absl::string_view text, size_t offset) {
  const absl::string_view before = text.substr(0, offset);
  const size_t line = 1 + std::count(before.begin(), before.end(), '\n');
  const size_t line_start = before.rfind('\n');
  const size_t column = line_start == absl::string_view::npos ? offset + 1 : offset - line_start;
  return absl::StrCat(line, ":", column);
}

// The protobuf JSON parser reports syntax errors on three lines: the problem, up to 20 bytes of
// input either side of the error, and a caret under it. wmctl prints one-line errors, so this
// turns that into "LINE:COL: problem", locating the excerpt in the input. Unknown fields come as
// "(parent.path) name: Cannot find field." and become "unknown field \"name\" in parent.path".
std::string DescribeJsonError(absl::string_view json, absl::string_view message) {
  constexpr absl::string_view kUnknownField = ": Cannot find field.";
  if (absl::ConsumeSuffix(&message, kUnknownField)) {
    std::string parent;
    if (absl::ConsumePrefix(&message, "(")) {
      const size_t close = message.find(") ");
      if (close != absl::string_view::npos) {
        parent = std::string(message.substr(0, close));
        message.remove_prefix(close + 2);
      }
    }
    return absl::StrCat("unknown field \"", message, "\"",
                        parent.empty() ? "" : absl::StrCat(" in ", parent));
  }
  const size_t first_newline = message.find('\n');
  const size_t last_newline = message.rfind('\n');
  if (first_newline == absl::string_view::npos || first_newline == last_newline) {
    return std::string(message);
  }
  const absl::string_view problem = message.substr(0, first_newline);
  const absl::string_view excerpt =
      message.substr(first_newline + 1, last_newline - first_newline - 1);
  const absl::string_view caret = message.substr(last_newline + 1);
  const size_t at = json.find(excerpt);
  // Only trust a unique match; otherwise the position would be a guess.
  if (caret.empty() || caret.back() != '^' || at == absl::string_view::npos ||
      json.find(excerpt, at + 1) != absl::string_view::npos) {
    return std::string(problem);
  }
  return absl::StrCat(LineColumn(json, at + caret.size() - 1), ": ", problem);
}

}  // namespace

absl::StatusOr<v1::TrajectoryFile> ParseTrajectoryJson(absl::string_view json,
                                                       absl::string_view source) {
  v1::TrajectoryFile file;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto status = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(json.data(), json.size()), &file, options);
  if (!status.ok()) {
    const absl::string_view message(status.message().data(), status.message().size());
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": invalid trajectory JSON: ", DescribeJsonError(json, message)));
  }
  return file;
}

absl::StatusOr<std::string> TrajectoryToJson(const v1::TrajectoryFile& file) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.always_print_primitive_fields = true;
  std::string json;
  const auto status = google::protobuf::util::MessageToJsonString(file, &json, options);
  if (!status.ok()) {
    return absl::InternalError(
        absl::StrCat("cannot serialise trajectory: ", std::string(status.message())));
  }
  if (json.empty() || json.back() != '\n') json.push_back('\n');
  return json;
}

absl::StatusOr<v1::TrajectoryFile> ReadTrajectoryFile(const std::string& path) {
  absl::StatusOr<std::string> bytes = ReadFileBytes(path);
  if (!bytes.ok()) return bytes.status();
  return ParseTrajectoryJson(*bytes, path);
}

absl::Status WriteTrajectoryFile(const std::string& path, const v1::TrajectoryFile& file) {
  absl::StatusOr<std::string> json = TrajectoryToJson(file);
  if (!json.ok()) return json.status();
  return WriteFileBytes(path, *json);
}

void ScaleIntrinsicsToImage(v1::TrajectoryFile& file, int image_w, int image_h) {
  const uint32_t file_w = file.image_width();
  const uint32_t file_h = file.image_height();
  if (file_w == 0 || file_h == 0 || image_w <= 0 || image_h <= 0) return;
  if (file_w == static_cast<uint32_t>(image_w) && file_h == static_cast<uint32_t>(image_h)) {
    return;
  }
  const double sx = static_cast<double>(image_w) / file_w;
  const double sy = static_cast<double>(image_h) / file_h;
  for (v1::Intrinsics& k : *file.mutable_trajectory()->mutable_intrinsics()) {
    k.set_fx(k.fx() * sx);
    k.set_cx(k.cx() * sx);
    k.set_fy(k.fy() * sy);
    k.set_cy(k.cy() * sy);
  }
  file.set_image_width(image_w);
  file.set_image_height(image_h);
}

}  // namespace wmserve::client
