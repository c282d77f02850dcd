#include "worker/models/sana/json.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <set>
#include <system_error>

namespace wmserve::worker::sana {
namespace {

std::string Printable(char c) {
  const auto u = static_cast<unsigned char>(c);
  if (u >= 0x20 && u < 0x7f) return std::string("'") + c + "'";
  char buf[16];
  std::snprintf(buf, sizeof(buf), "byte 0x%02x", u);
  return buf;
}

class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  JsonValue ParseDocument() {
    SkipWhitespace();
    if (AtEnd()) Fail("empty document");
    JsonValue value = ParseValue(0);
    SkipWhitespace();
    if (!AtEnd()) Fail("unexpected " + Printable(Peek()) + " after the document");
    return value;
  }

 private:
  [[noreturn]] void Fail(const std::string& message) const { FailAt(pos_, message); }

  [[noreturn]] void FailAt(size_t at, const std::string& message) const {
    int line = 1;
    size_t line_start = 0;
    for (size_t i = 0; i < at && i < text_.size(); ++i) {
      if (text_[i] == '\n') {
        ++line;
        line_start = i + 1;
      }
    }
    throw JsonError("json: line " + std::to_string(line) + ", column " +
                    std::to_string(at - line_start + 1) + " (byte " + std::to_string(at) +
                    "): " + message);
  }

  bool AtEnd() const { return pos_ >= text_.size(); }
  char Peek() const { return text_[pos_]; }

  void SkipWhitespace() {
    while (!AtEnd()) {
      const char c = Peek();
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
      ++pos_;
    }
  }

  void Expect(char c, const char* context) {
    if (AtEnd()) Fail(std::string("unexpected end of input, expected '") + c + "' " + context);
    if (Peek() != c) {
      Fail(std::string("expected '") + c + "' " + context + ", found " + Printable(Peek()));
    }
    ++pos_;
  }

  JsonValue ParseValue(int depth) {
    if (AtEnd()) Fail("unexpected end of input, expected a value");
    const char c = Peek();
    switch (c) {
      case '{':
        return ParseObject(depth + 1);
      case '[':
        return ParseArray(depth + 1);
      case '"':
        return JsonValue::String(ParseString());
      case 't':
        ParseLiteral("true");
        return JsonValue::Bool(true);
      case 'f':
        ParseLiteral("false");
        return JsonValue::Bool(false);
      case 'n':
        ParseLiteral("null");
        return JsonValue::Null();
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return ParseNumber();
        Fail("unexpected " + Printable(c) + ", expected a value");
    }
  }

  void ParseLiteral(std::string_view literal) {
    if (text_.substr(pos_, literal.size()) != literal) {
      Fail("invalid literal, expected '" + std::string(literal) + "'");
    }
    pos_ += literal.size();
  }

  void CheckDepth(int depth) const {
    if (depth > kMaxJsonDepth) {
      Fail("nesting deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    }
  }

  JsonValue ParseObject(int depth) {
    CheckDepth(depth);
    ++pos_;  // '{'
    JsonValue::Object members;
    std::set<std::string, std::less<>> seen;
    SkipWhitespace();
    if (!AtEnd() && Peek() == '}') {
      ++pos_;
      return JsonValue::MakeObject(std::move(members));
    }
    while (true) {
      SkipWhitespace();
      if (AtEnd()) Fail("unexpected end of input in object, expected a key");
      if (Peek() != '"') Fail("expected a string key in object, found " + Printable(Peek()));
      const size_t key_pos = pos_;
      std::string key = ParseString();
      if (!seen.insert(key).second) FailAt(key_pos, "duplicate key " + JsonQuote(key));
      SkipWhitespace();
      Expect(':', "after an object key");
      SkipWhitespace();
      JsonValue value = ParseValue(depth);
      members.emplace_back(std::move(key), std::move(value));
      SkipWhitespace();
      if (AtEnd()) Fail("unexpected end of input, expected ',' or '}' in object");
      if (Peek() == ',') {
        ++pos_;
        SkipWhitespace();
        if (!AtEnd() && Peek() == '}') Fail("trailing comma in object");
        continue;
      }
      if (Peek() == '}') {
        ++pos_;
        return JsonValue::MakeObject(std::move(members));
      }
      Fail("expected ',' or '}' in object, found " + Printable(Peek()));
    }
  }

  JsonValue ParseArray(int depth) {
    CheckDepth(depth);
    ++pos_;  // '['
    JsonValue::Array items;
    SkipWhitespace();
    if (!AtEnd() && Peek() == ']') {
      ++pos_;
      return JsonValue::MakeArray(std::move(items));
    }
    while (true) {
      SkipWhitespace();
      items.push_back(ParseValue(depth));
      SkipWhitespace();
      if (AtEnd()) Fail("unexpected end of input, expected ',' or ']' in array");
      if (Peek() == ',') {
        ++pos_;
        SkipWhitespace();
        if (!AtEnd() && Peek() == ']') Fail("trailing comma in array");
        continue;
      }
      if (Peek() == ']') {
        ++pos_;
        return JsonValue::MakeArray(std::move(items));
      }
      Fail("expected ',' or ']' in array, found " + Printable(Peek()));
    }
  }

  static void AppendUtf8(uint32_t cp, std::string& out) {
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out.push_back(static_cast<char>(0xc0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    } else if (cp < 0x10000) {
      out.push_back(static_cast<char>(0xe0 | (cp >> 12)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    } else {
      out.push_back(static_cast<char>(0xf0 | (cp >> 18)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3f)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    }
  }

  uint32_t ParseHex4() {
    if (text_.size() - pos_ < 4) Fail("truncated \\u escape (need 4 hex digits)");
    uint32_t value = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = text_[pos_ + i];
      uint32_t digit;
      if (c >= '0' && c <= '9') {
        digit = static_cast<uint32_t>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        digit = static_cast<uint32_t>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        digit = static_cast<uint32_t>(c - 'A' + 10);
      } else {
        FailAt(pos_ + i, "invalid hex digit " + Printable(c) + " in \\u escape");
      }
      value = value * 16 + digit;
    }
    pos_ += 4;
    return value;
  }

  // Validates one UTF-8 sequence starting at pos_ and appends it. RFC 3629: no overlongs, no
  // surrogates, nothing above U+10FFFF.
  void CopyUtf8(std::string& out) {
    const auto b0 = static_cast<unsigned char>(text_[pos_]);
    int len;
    uint32_t cp;
    if (b0 < 0x80) {
      out.push_back(static_cast<char>(b0));
      ++pos_;
      return;
    } else if ((b0 & 0xe0) == 0xc0) {
      len = 2;
      cp = b0 & 0x1f;
    } else if ((b0 & 0xf0) == 0xe0) {
      len = 3;
      cp = b0 & 0x0f;
    } else if ((b0 & 0xf8) == 0xf0) {
      len = 4;
      cp = b0 & 0x07;
    } else {
      Fail("invalid UTF-8 lead byte 0x" + Hex(b0) + " in string");
    }
    if (text_.size() - pos_ < static_cast<size_t>(len)) Fail("truncated UTF-8 sequence in string");
    for (int i = 1; i < len; ++i) {
      const auto b = static_cast<unsigned char>(text_[pos_ + i]);
      if ((b & 0xc0) != 0x80) FailAt(pos_ + i, "invalid UTF-8 continuation byte in string");
      cp = (cp << 6) | (b & 0x3f);
    }
    static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len]) Fail("overlong UTF-8 encoding in string");
    if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) Fail("invalid UTF-8 code point in string");
    out.append(text_.data() + pos_, static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
  }

  static std::string Hex(unsigned v) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "%02x", v);
    return buf;
  }

  std::string ParseString() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      if (AtEnd()) Fail("unterminated string");
      const char c = Peek();
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (static_cast<unsigned char>(c) < 0x20) {
        Fail("unescaped control character " + Printable(c) + " in string");
      }
      if (c != '\\') {
        CopyUtf8(out);
        continue;
      }
      const size_t escape_pos = pos_;
      ++pos_;
      if (AtEnd()) Fail("unterminated escape in string");
      const char e = Peek();
      ++pos_;
      switch (e) {
        case '"':
          out.push_back('"');
          break;
        case '\\':
          out.push_back('\\');
          break;
        case '/':
          out.push_back('/');
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'u': {
          uint32_t cp = ParseHex4();
          if (cp >= 0xdc00 && cp <= 0xdfff) {
            FailAt(escape_pos, "lone low surrogate \\u" + Hex4(cp) + " in string");
          }
          if (cp >= 0xd800 && cp <= 0xdbff) {
            if (text_.substr(pos_, 2) != "\\u") {
              FailAt(escape_pos, "high surrogate \\u" + Hex4(cp) + " not followed by a low one");
            }
            pos_ += 2;
            const uint32_t low = ParseHex4();
            if (low < 0xdc00 || low > 0xdfff) {
              FailAt(escape_pos, "high surrogate \\u" + Hex4(cp) + " followed by \\u" + Hex4(low) +
                                     ", not a low surrogate");
            }
            cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
          }
          AppendUtf8(cp, out);
          break;
        }
        default:
          FailAt(escape_pos, "invalid escape '\\" + std::string(1, e) + "' in string");
      }
    }
  }

  static std::string Hex4(uint32_t v) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "%04x", v);
    return buf;
  }

  JsonValue ParseNumber() {
    const size_t start = pos_;
    bool is_integer = true;
    if (Peek() == '-') ++pos_;
    if (AtEnd() || !IsDigit(Peek())) Fail("expected a digit in number");
    if (Peek() == '0') {
      ++pos_;
      if (!AtEnd() && IsDigit(Peek())) FailAt(start, "leading zeros are not allowed in numbers");
    } else {
      while (!AtEnd() && IsDigit(Peek())) ++pos_;
    }
    if (!AtEnd() && Peek() == '.') {
      is_integer = false;
      ++pos_;
      if (AtEnd() || !IsDigit(Peek())) Fail("expected a digit after '.' in number");
      while (!AtEnd() && IsDigit(Peek())) ++pos_;
    }
    if (!AtEnd() && (Peek() == 'e' || Peek() == 'E')) {
      is_integer = false;
      ++pos_;
      if (!AtEnd() && (Peek() == '+' || Peek() == '-')) ++pos_;
      if (AtEnd() || !IsDigit(Peek())) Fail("expected a digit in number exponent");
      while (!AtEnd() && IsDigit(Peek())) ++pos_;
    }
    const char* first = text_.data() + start;
    const char* last = text_.data() + pos_;
    if (is_integer) {
      int64_t value = 0;
      const auto [ptr, ec] = std::from_chars(first, last, value);
      if (ec == std::errc() && ptr == last) return JsonValue::Integer(value);
      // Out of int64 range: keep it as a double.
    }
    double value = 0;
    const auto [ptr, ec] = std::from_chars(first, last, value);
    if (ec == std::errc::result_out_of_range || (ec == std::errc() && !std::isfinite(value))) {
      FailAt(start, "number " + std::string(first, last) + " is out of double range");
    }
    if (ec != std::errc() || ptr != last) FailAt(start, "invalid number");
    return JsonValue::Number(value);
  }

  static bool IsDigit(char c) { return c >= '0' && c <= '9'; }

  std::string_view text_;
  size_t pos_ = 0;
};

std::string Describe(const JsonValue& v) { return JsonValue::TypeName(v.type()); }

[[noreturn]] void TypeMismatch(std::string_view what, const JsonValue& v, const char* expected) {
  throw JsonError("json: " + std::string(what) + " is " + Describe(v) + ", expected " + expected);
}

void DumpTo(const JsonValue& v, std::string& out) {
  switch (v.type()) {
    case JsonValue::Type::kNull:
      out += "null";
      return;
    case JsonValue::Type::kBool:
      out += v.AsBool() ? "true" : "false";
      return;
    case JsonValue::Type::kNumber: {
      if (v.is_integer()) {
        out += std::to_string(v.AsInt());
        return;
      }
      char buf[40];
      const auto [ptr, ec] = std::to_chars(buf, buf + sizeof(buf), v.AsDouble());
      if (ec != std::errc()) throw JsonError("json: cannot format a number");
      std::string s(buf, ptr);
      // Keep it a non-integer literal so that it parses back as a double.
      if (s.find_first_of(".eE") == std::string::npos) s += ".0";
      out += s;
      return;
    }
    case JsonValue::Type::kString:
      out += JsonQuote(v.AsString());
      return;
    case JsonValue::Type::kArray: {
      out += '[';
      bool first = true;
      for (const JsonValue& item : v.AsArray()) {
        if (!first) out += ',';
        first = false;
        DumpTo(item, out);
      }
      out += ']';
      return;
    }
    case JsonValue::Type::kObject: {
      out += '{';
      bool first = true;
      for (const auto& [key, value] : v.AsObject()) {
        if (!first) out += ',';
        first = false;
        out += JsonQuote(key);
        out += ':';
        DumpTo(value, out);
      }
      out += '}';
      return;
    }
  }
}

}  // namespace

JsonValue JsonValue::Bool(bool b) {
  JsonValue v;
  v.type_ = Type::kBool;
  v.bool_ = b;
  return v;
}

JsonValue JsonValue::Number(double value) {
  JsonValue v;
  v.type_ = Type::kNumber;
  v.number_ = value;
  return v;
}

JsonValue JsonValue::Integer(int64_t value) {
  JsonValue v;
  v.type_ = Type::kNumber;
  v.is_integer_ = true;
  v.integer_ = value;
  v.number_ = static_cast<double>(value);
  return v;
}

JsonValue JsonValue::String(std::string s) {
  JsonValue v;
  v.type_ = Type::kString;
  v.string_ = std::move(s);
  return v;
}

JsonValue JsonValue::MakeArray(Array items) {
  JsonValue v;
  v.type_ = Type::kArray;
  v.array_ = std::make_shared<const Array>(std::move(items));
  return v;
}

JsonValue JsonValue::MakeObject(Object members) {
  JsonValue v;
  v.type_ = Type::kObject;
  v.object_ = std::make_shared<const Object>(std::move(members));
  return v;
}

const char* JsonValue::TypeName(Type type) {
  switch (type) {
    case Type::kNull:
      return "null";
    case Type::kBool:
      return "a boolean";
    case Type::kNumber:
      return "a number";
    case Type::kString:
      return "a string";
    case Type::kArray:
      return "an array";
    case Type::kObject:
      return "an object";
  }
  return "?";
}

bool JsonValue::AsBool(std::string_view what) const {
  if (!is_bool()) TypeMismatch(what, *this, "a boolean");
  return bool_;
}

double JsonValue::AsDouble(std::string_view what) const {
  if (!is_number()) TypeMismatch(what, *this, "a number");
  return number_;
}

int64_t JsonValue::AsInt(std::string_view what) const {
  if (!is_number()) TypeMismatch(what, *this, "an integer");
  if (is_integer_) return integer_;
  // 2^63 is exactly representable; anything >= it does not fit.
  if (std::trunc(number_) != number_ || number_ < -9223372036854775808.0 ||
      number_ >= 9223372036854775808.0) {
    char buf[40];
    std::snprintf(buf, sizeof(buf), "%.17g", number_);
    throw JsonError("json: " + std::string(what) + " is " + buf + ", expected an integer");
  }
  return static_cast<int64_t>(number_);
}

const std::string& JsonValue::AsString(std::string_view what) const {
  if (!is_string()) TypeMismatch(what, *this, "a string");
  return string_;
}

const JsonValue::Array& JsonValue::AsArray(std::string_view what) const {
  if (!is_array()) TypeMismatch(what, *this, "an array");
  return *array_;
}

const JsonValue::Object& JsonValue::AsObject(std::string_view what) const {
  if (!is_object()) TypeMismatch(what, *this, "an object");
  return *object_;
}

const JsonValue* JsonValue::Find(std::string_view key) const {
  if (!is_object()) return nullptr;
  for (const auto& [k, v] : *object_) {
    if (k == key) return &v;
  }
  return nullptr;
}

const JsonValue& JsonValue::At(std::string_view key) const {
  const JsonValue* v = Find(key);
  if (v == nullptr) {
    if (!is_object()) throw JsonError("json: cannot look up key '" + std::string(key) + "' in " +
                                      Describe(*this));
    throw JsonError("json: missing key '" + std::string(key) + "'");
  }
  return *v;
}

std::string JsonValue::Dump() const {
  std::string out;
  DumpTo(*this, out);
  return out;
}

JsonValue ParseJson(std::string_view text) { return Parser(text).ParseDocument(); }

std::string JsonQuote(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  out.push_back('"');
  for (const char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(c));
          out += buf;
        } else {
          out.push_back(c);
        }
    }
  }
  out.push_back('"');
  return out;
}

}  // namespace wmserve::worker::sana
