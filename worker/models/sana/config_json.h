// File: the parts of reading a diffusers-style model config (a JSON object of constructor
// arguments) that every config of the ports shares: SanaConfig, ltx2::VaeConfig and
// ltx2::TransformerConfig parse their own keys with these.
//
// Depends on the C++ standard library only (json.h, errors.h). Every error is a ConfigError whose
// message starts with "config: ".
#ifndef WMSERVE_WORKER_MODELS_SANA_CONFIG_JSON_H_
#define WMSERVE_WORKER_MODELS_SANA_CONFIG_JSON_H_

#include <string>
#include <string_view>
#include <vector>

#include "worker/models/sana/json.h"

namespace wmserve::worker::sana {

// Parses `json`, which must be an object.
JsonValue ParseConfigObject(std::string_view json);

// A JsonError raised while reading the document's values, as a ConfigError (one "config: "
// prefix, not "config: json: ...").
[[noreturn]] void ThrowConfigJsonError(const JsonError& error);

// An integer value that fits an int; `key` names it in errors.
int ConfigInt(const JsonValue& value, const std::string& key);

// Keys the parser does not know: a ConfigError listing them ("... (CLASS has no such
// argument)") unless `allow`; otherwise they are returned to be recorded as ignored.
std::vector<std::string> CheckUnknownKeys(std::vector<std::string> unknown, bool allow,
                                          std::string_view model_class);

// The whole file at `path` (ConfigError naming it when it cannot be read).
std::string ReadConfigFile(const std::string& path);

}  // namespace wmserve::worker::sana

#endif  // WMSERVE_WORKER_MODELS_SANA_CONFIG_JSON_H_
