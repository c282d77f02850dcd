// Shared config-document helpers (see config_json.h).
#include "worker/models/sana/config_json.h"

#include <cstdint>
#include <fstream>
#include <sstream>
#include <utility>

#include "worker/models/sana/errors.h"

namespace wmserve::worker::sana {

JsonValue ParseConfigObject(std::string_view json) {
  JsonValue doc;
  try {
    doc = ParseJson(json);
  } catch (const JsonError& e) {
    throw ConfigError(std::string("config: ") + e.what());
  }
  if (!doc.is_object()) {
    throw ConfigError(std::string("config: the document is ") + JsonValue::TypeName(doc.type()) +
                      ", expected an object");
  }
  return doc;
}

void ThrowConfigJsonError(const JsonError& error) {
  // JsonError messages start with "json: "; keep one prefix.
  constexpr std::string_view kJson = "json: ";
  const std::string what = error.what();
  throw ConfigError("config: " + (what.rfind(kJson, 0) == 0 ? what.substr(kJson.size()) : what));
}

int ConfigInt(const JsonValue& value, const std::string& key) {
  const int64_t x = value.AsInt("'" + key + "'");
  if (x < INT32_MIN || x > INT32_MAX) {
    throw ConfigError("config: '" + key + "' = " + std::to_string(x) + " is out of range");
  }
  return static_cast<int>(x);
}

std::vector<std::string> CheckUnknownKeys(std::vector<std::string> unknown, bool allow,
                                          std::string_view model_class) {
  if (unknown.empty() || allow) return unknown;
  std::string list;
  for (const std::string& k : unknown) list += (list.empty() ? "'" : ", '") + k + "'";
  throw ConfigError("config: unknown key" + std::string(unknown.size() > 1 ? "s " : " ") + list +
                    " (" + std::string(model_class) + " has no such argument)");
}

std::string ReadConfigFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError("config: cannot read '" + path + "'");
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad()) throw ConfigError("config: error reading '" + path + "'");
  return buf.str();
}

}  // namespace wmserve::worker::sana
