// File: a small, strict JSON reader (RFC 8259) for safetensors headers and model configs.
//
// Depends on the C++ standard library only. Strict means: exactly one value with optional
// surrounding whitespace; no comments, trailing commas, single quotes, NaN/Infinity, leading
// zeros, unescaped control characters, invalid UTF-8 or lone UTF-16 surrogates; duplicate object
// keys are an error (the safetensors reference rejects them too). Nesting is limited to
// kMaxJsonDepth levels so that hostile input cannot exhaust the stack.
//
// Errors throw JsonError (a std::runtime_error) whose message names the byte offset, line and
// column: "json: line 3, column 14 (byte 41): expected ',' or '}' in object".
//
// Typed accessors (AsInt, AsString, At, ...) also throw JsonError with a precise message, so a
// config reader can write `cfg.depth = doc.At("num_layers").AsInt()` and still report
// "json: 'num_layers' is a string, expected an integer".
#ifndef WMSERVE_WORKER_MODELS_SANA_JSON_H_
#define WMSERVE_WORKER_MODELS_SANA_JSON_H_

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace wmserve::worker::sana {

inline constexpr int kMaxJsonDepth = 128;

class JsonError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class JsonValue {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
  using Array = std::vector<JsonValue>;
  // Members in document order (lookups are linear; objects here are small).
  using Object = std::vector<std::pair<std::string, JsonValue>>;

  JsonValue() = default;  // null
  static JsonValue Null() { return JsonValue(); }
  static JsonValue Bool(bool b);
  // A number. `integer` is set when the literal had no fraction/exponent and fits int64.
  static JsonValue Number(double value);
  static JsonValue Integer(int64_t value);
  static JsonValue String(std::string s);
  static JsonValue MakeArray(Array items);
  static JsonValue MakeObject(Object members);

  Type type() const { return type_; }
  static const char* TypeName(Type type);
  bool is_null() const { return type_ == Type::kNull; }
  bool is_bool() const { return type_ == Type::kBool; }
  bool is_number() const { return type_ == Type::kNumber; }
  // A number written as an integer literal (no '.', 'e') within int64 range.
  bool is_integer() const { return type_ == Type::kNumber && is_integer_; }
  bool is_string() const { return type_ == Type::kString; }
  bool is_array() const { return type_ == Type::kArray; }
  bool is_object() const { return type_ == Type::kObject; }

  // Typed access; each throws JsonError naming `what` (e.g. a key path) on a type mismatch.
  bool AsBool(std::string_view what = "value") const;
  double AsDouble(std::string_view what = "value") const;
  // Accepts integer literals, and also numbers such as 3.0 or 1e2 whose value is integral.
  int64_t AsInt(std::string_view what = "value") const;
  const std::string& AsString(std::string_view what = "value") const;
  const Array& AsArray(std::string_view what = "value") const;
  const Object& AsObject(std::string_view what = "value") const;

  // Object access. Find returns nullptr when absent (or when this is not an object).
  const JsonValue* Find(std::string_view key) const;
  // Throws JsonError "json: missing key 'k'" when absent or this is not an object.
  const JsonValue& At(std::string_view key) const;
  bool Contains(std::string_view key) const { return Find(key) != nullptr; }

  // Compact serialisation (keys in stored order; numbers with 17 significant digits, integers
  // exactly). Round-trips through ParseJson.
  std::string Dump() const;

 private:
  Type type_ = Type::kNull;
  bool bool_ = false;
  bool is_integer_ = false;
  double number_ = 0;
  int64_t integer_ = 0;
  std::string string_;
  // Shared so that copies of large documents stay cheap; values are immutable once built.
  std::shared_ptr<const Array> array_;
  std::shared_ptr<const Object> object_;
};

// Parses one JSON document. Throws JsonError.
JsonValue ParseJson(std::string_view text);

// Escapes `s` as a JSON string literal, quotes included.
std::string JsonQuote(std::string_view s);

}  // namespace wmserve::worker::sana

#endif  // WMSERVE_WORKER_MODELS_SANA_JSON_H_
