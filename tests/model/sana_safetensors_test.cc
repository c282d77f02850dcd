// Tests for the SANA-WM port's strict JSON reader and safetensors reader
// (worker/models/sana/{json,safetensors}.h): JSON edge cases, a round trip through files written
// here by a tiny independent writer, dtype conversion, corrupt files (errors, never crashes), the
// one-message CheckTensors report, and a smoke test over the golden files when present.
#include <ATen/core/Tensor.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/tensor.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/model/model_test_util.h"
#include "worker/models/sana/json.h"
#include "worker/models/sana/safetensors.h"

namespace wmserve::worker::sana {
namespace {

using test_util::SanaGoldenDir;

using ::testing::HasSubstr;

// ---------------------------------------------------------------------------------------------
// JSON

TEST(SanaJson, ParsesAllValueKinds) {
  const JsonValue v = ParseJson(
      R"( {"a": [1, -2, 3.5, 1e3, -0.25E-2, 0], "b": true, "c": false, "d": null,
           "e": "x\"y\\z\/\b\f\n\r\t", "f": {}, "g": []} )");
  ASSERT_TRUE(v.is_object());
  const auto& a = v.At("a").AsArray();
  ASSERT_EQ(a.size(), 6u);
  EXPECT_TRUE(a[0].is_integer());
  EXPECT_EQ(a[0].AsInt(), 1);
  EXPECT_EQ(a[1].AsInt(), -2);
  EXPECT_FALSE(a[2].is_integer());
  EXPECT_DOUBLE_EQ(a[2].AsDouble(), 3.5);
  EXPECT_EQ(a[3].AsInt(), 1000);  // integral value written with an exponent
  EXPECT_DOUBLE_EQ(a[4].AsDouble(), -0.0025);
  EXPECT_EQ(a[5].AsInt(), 0);
  EXPECT_TRUE(v.At("b").AsBool());
  EXPECT_FALSE(v.At("c").AsBool());
  EXPECT_TRUE(v.At("d").is_null());
  EXPECT_EQ(v.At("e").AsString(), "x\"y\\z/\b\f\n\r\t");
  EXPECT_TRUE(v.At("f").AsObject().empty());
  EXPECT_TRUE(v.At("g").AsArray().empty());
  EXPECT_EQ(v.Find("zz"), nullptr);
}

TEST(SanaJson, UnicodeEscapesAndUtf8) {
  // \u00e9 (2 bytes), \u20ac (3 bytes), surrogate pair for U+1F600 (4 bytes), raw UTF-8.
  const JsonValue v = ParseJson(R"(["\u00e9\u20AC\ud83d\ude00", "é€😀", "\u0000"])");
  const auto& a = v.AsArray();
  EXPECT_EQ(a[0].AsString(), "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
  EXPECT_EQ(a[1].AsString(), a[0].AsString());
  EXPECT_EQ(a[2].AsString(), std::string(1, '\0'));
}

TEST(SanaJson, LargeNumbers) {
  const JsonValue v = ParseJson("[9223372036854775807, -9223372036854775808, 9223372036854775808]");
  EXPECT_EQ(v.AsArray()[0].AsInt(), INT64_MAX);
  EXPECT_EQ(v.AsArray()[1].AsInt(), INT64_MIN);
  EXPECT_FALSE(v.AsArray()[2].is_integer());  // out of int64: a double
  EXPECT_THROW(v.AsArray()[2].AsInt(), JsonError);
  EXPECT_THROW(ParseJson("1e999"), JsonError);
}

TEST(SanaJson, RejectsMalformedInput) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "empty document"},
      {"   ", "empty document"},
      {"{", "expected a key"},
      {"{1:2}", "expected a string key"},
      {"{\"a\" 1}", "expected ':'"},
      {"{\"a\":1,}", "trailing comma"},
      {"[1,]", "trailing comma"},
      {"[1 2]", "expected ',' or ']'"},
      {"{\"a\":1 \"b\":2}", "expected ',' or '}'"},
      {"{\"a\":1,\"a\":2}", "duplicate key \"a\""},
      {"01", "leading zeros"},
      {"-", "expected a digit"},
      {"1.", "after '.'"},
      {"1e", "exponent"},
      {"+1", "unexpected '+'"},
      {"NaN", "unexpected 'N'"},
      {"tru", "invalid literal"},
      {"nul", "invalid literal"},
      {"\"abc", "unterminated string"},
      {"\"a\nb\"", "unescaped control character"},
      {"\"\\x\"", "invalid escape"},
      {"\"\\u12zz\"", "invalid hex digit"},
      {"\"\\u12", "truncated"},
      {"\"\\ud800\"", "not followed by a low"},
      {"\"\\ud800\\u0041\"", "not a low surrogate"},
      {"\"\\udc00\"", "lone low surrogate"},
      {"\"\xff\"", "invalid UTF-8 lead byte"},
      {"\"\xc3", "truncated UTF-8"},
      {"\"\xc3\x28\"", "continuation byte"},
      {"\"\xc0\xaf\"", "overlong"},
      {"\"\xed\xa0\x80\"", "invalid UTF-8 code point"},
      {"1 2", "after the document"},
      {"// c\n1", "unexpected '/'"},
      {"'a'", "unexpected '''"},
  };
  for (const auto& [text, message] : cases) {
    SCOPED_TRACE(text);
    try {
      ParseJson(text);
      ADD_FAILURE() << "no error";
    } catch (const JsonError& e) {
      EXPECT_THAT(e.what(), HasSubstr(message));
      EXPECT_THAT(e.what(), HasSubstr("json: line "));
    }
  }
}

TEST(SanaJson, ErrorPositionIsLineAndColumn) {
  try {
    ParseJson("{\n  \"a\": 1,\n  \"b\" 2\n}");
    FAIL() << "no error";
  } catch (const JsonError& e) {
    EXPECT_THAT(e.what(), HasSubstr("line 3, column 7"));
  }
}

TEST(SanaJson, NestingIsBounded) {
  const std::string deep(kMaxJsonDepth + 1, '[');
  EXPECT_THROW(ParseJson(deep + std::string(kMaxJsonDepth + 1, ']')), JsonError);
  const std::string ok(kMaxJsonDepth, '[');
  EXPECT_NO_THROW(ParseJson(ok + std::string(kMaxJsonDepth, ']')));
  // Far deeper than the stack would allow without the bound.
  EXPECT_THROW(ParseJson(std::string(1000000, '[')), JsonError);
}

TEST(SanaJson, TypedAccessErrorsNameTheField) {
  const JsonValue v = ParseJson(R"({"n": "x", "f": 1.5})");
  try {
    v.At("n").AsInt("'n'");
    FAIL();
  } catch (const JsonError& e) {
    EXPECT_STREQ(e.what(), "json: 'n' is a string, expected an integer");
  }
  EXPECT_THROW(v.At("f").AsInt(), JsonError);
  try {
    v.At("missing");
    FAIL();
  } catch (const JsonError& e) {
    EXPECT_STREQ(e.what(), "json: missing key 'missing'");
  }
}

TEST(SanaJson, DumpRoundTrips) {
  const std::string text =
      R"({"a":[1,-2,3.5,1e-7,true,false,null],"s":"q\"\n\u0001é","o":{"x":{}}})";
  const JsonValue v = ParseJson(text);
  const std::string dumped = v.Dump();
  const JsonValue w = ParseJson(dumped);
  EXPECT_EQ(w.Dump(), dumped);
  EXPECT_EQ(w.At("s").AsString(), "q\"\n\x01\xc3\xa9");
  EXPECT_DOUBLE_EQ(w.At("a").AsArray()[3].AsDouble(), 1e-7);
  EXPECT_FALSE(ParseJson(JsonValue::Number(2.0).Dump()).is_integer());
}

// ---------------------------------------------------------------------------------------------
// A tiny safetensors writer, independent of the reader.

struct Entry {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

std::string ShapeJson(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string HeaderJson(const std::vector<Entry>& entries,
                       const std::map<std::string, std::string>& metadata) {
  std::string h = "{";
  bool first = true;
  if (!metadata.empty()) {
    h += "\"__metadata__\":{";
    bool f2 = true;
    for (const auto& [k, v] : metadata) {
      h += (f2 ? "" : ",") + JsonQuote(k) + ":" + JsonQuote(v);
      f2 = false;
    }
    h += "}";
    first = false;
  }
  uint64_t offset = 0;
  for (const Entry& e : entries) {
    h += (first ? "" : ",") + JsonQuote(e.name) + ":{\"dtype\":\"" + e.dtype +
         "\",\"shape\":" + ShapeJson(e.shape) + ",\"data_offsets\":[" + std::to_string(offset) +
         "," + std::to_string(offset + e.bytes.size()) + "]}";
    offset += e.bytes.size();
    first = false;
  }
  return h + "}";
}

std::string FileBytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string BuildFile(const std::vector<Entry>& entries,
                      const std::map<std::string, std::string>& metadata = {},
                      int header_padding = 0) {
  std::string data;
  for (const Entry& e : entries) data += e.bytes;
  return FileBytes(HeaderJson(entries, metadata) + std::string(static_cast<size_t>(header_padding), ' '),
                   data);
}

template <typename T>
std::string Raw(const std::vector<T>& values) {
  std::string s(values.size() * sizeof(T), '\0');
  std::memcpy(s.data(), values.data(), s.size());
  return s;
}

class TempFiles : public ::testing::Test {
 protected:
  std::string Write(const std::string& bytes, const std::string& name = "t.safetensors") {
    const std::string path = ::testing::TempDir() + "/sana_st_" + std::to_string(counter_++) + "_" + name;
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    paths_.push_back(path);
    return path;
  }
  void TearDown() override {
    for (const std::string& p : paths_) std::remove(p.c_str());
  }

 private:
  std::vector<std::string> paths_;
  int counter_ = 0;
};

using SanaSafetensors = TempFiles;

std::vector<Entry> SampleEntries() {
  return {
      {"w.f32", "F32", {2, 3}, Raw<float>({1.f, -2.f, 3.5f, 0.f, 1e-3f, -7.25f})},
      // bf16 bit patterns: 1.5 = 0x3fc0, -2.0 = 0xc000, 0.5 = 0x3f00, 3.0 = 0x4040
      {"w.bf16", "BF16", {4}, Raw<uint16_t>({0x3fc0, 0xc000, 0x3f00, 0x4040})},
      // f16 bit patterns: 1.5 = 0x3e00, -2.0 = 0xc000, 0.5 = 0x3800, 65504 = 0x7bff
      {"w.f16", "F16", {2, 2}, Raw<uint16_t>({0x3e00, 0xc000, 0x3800, 0x7bff})},
      {"mask", "I64", {3}, Raw<int64_t>({1, 0, -5})},
      {"scalar", "F32", {}, Raw<float>({42.f})},
      {"empty", "F32", {0, 3}, ""},
      {"ints", "I32", {2}, Raw<int32_t>({7, 8})},
  };
}

TEST_F(SanaSafetensors, RoundTripsTensorsAndMetadata) {
  const std::string path =
      Write(BuildFile(SampleEntries(), {{"config", "{\"a\": 1}"}, {"torch", "2.11"}}));
  const SafetensorsFile f = SafetensorsFile::Open(path);
  EXPECT_EQ(f.size(), 7u);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"empty", "ints", "mask", "scalar", "w.bf16",
                                                  "w.f16", "w.f32"}));
  EXPECT_EQ(f.metadata().size(), 2u);
  EXPECT_EQ(f.Metadata("config"), "{\"a\": 1}");
  EXPECT_THROW(f.Metadata("nope"), SafetensorsError);
  EXPECT_EQ(f.Info("w.f32").shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f.Info("w.f32").dtype, "F32");
  EXPECT_EQ(f.Info("w.f32").nbytes(), 24u);

  const at::Tensor w = f.Load("w.f32");
  EXPECT_EQ(w.scalar_type(), at::kFloat);
  EXPECT_EQ(w.sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_TRUE(at::equal(w, at::tensor({1.f, -2.f, 3.5f, 0.f, 1e-3f, -7.25f}).view({2, 3})));

  const at::Tensor mask = f.Load("mask");
  EXPECT_EQ(mask.scalar_type(), at::kLong);
  EXPECT_EQ(mask[2].item<int64_t>(), -5);

  const at::Tensor scalar = f.Load("scalar");
  EXPECT_EQ(scalar.dim(), 0);
  EXPECT_EQ(scalar.item<float>(), 42.f);
  EXPECT_EQ(f.Load("empty").sizes(), (std::vector<int64_t>{0, 3}));
  EXPECT_THROW(f.Load("absent"), SafetensorsError);
}

TEST_F(SanaSafetensors, ConvertsHalfAndBfloat16) {
  const SafetensorsFile f = SafetensorsFile::Open(Write(BuildFile(SampleEntries())));
  const at::Tensor bf = f.Load("w.bf16");
  EXPECT_EQ(bf.scalar_type(), at::kBFloat16);
  const at::Tensor bf32 = f.Load("w.bf16", at::kFloat);
  EXPECT_TRUE(at::equal(bf32, at::tensor({1.5f, -2.f, 0.5f, 3.f})));
  EXPECT_TRUE(at::equal(bf32, bf.to(at::kFloat)));

  const at::Tensor h32 = f.Load("w.f16", at::kFloat);
  EXPECT_TRUE(at::equal(h32, at::tensor({1.5f, -2.f, 0.5f, 65504.f}).view({2, 2})));
  EXPECT_EQ(f.Load("w.f16").scalar_type(), at::kHalf);

  // F32 -> BF16 rounds like LibTorch's own conversion.
  const at::Tensor w_bf16 = f.Load("w.f32", at::kBFloat16);
  EXPECT_EQ(w_bf16.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::equal(w_bf16, f.Load("w.f32").to(at::kBFloat16)));
  EXPECT_TRUE(at::equal(f.Load("w.f32", at::kDouble), f.Load("w.f32").to(at::kDouble)));
}

TEST_F(SanaSafetensors, UnsupportedDtypeOpensButDoesNotLoad) {
  const SafetensorsFile f = SafetensorsFile::Open(Write(BuildFile(SampleEntries())));
  EXPECT_EQ(f.Info("ints").dtype, "I32");
  try {
    f.Load("ints");
    FAIL() << "no error";
  } catch (const SafetensorsError& e) {
    EXPECT_THAT(e.what(), HasSubstr("tensor 'ints' has dtype I32, which cannot be loaded "
                                    "(supported: F32, BF16, F16, I64)"));
  }
}

TEST_F(SanaSafetensors, LoadNeverAliasesTheMapping) {
  const SafetensorsFile f = SafetensorsFile::Open(Write(BuildFile(SampleEntries())));
  at::Tensor a = f.Load("w.f32");
  a.fill_(9.f);
  EXPECT_EQ(f.Load("w.f32")[0][0].item<float>(), 1.f);
}

TEST_F(SanaSafetensors, ViewsKeepTheMappingAlive) {
  at::Tensor view;
  {
    const SafetensorsFile f = SafetensorsFile::Open(Write(BuildFile(SampleEntries())));
    view = f.View("w.f32");
  }  // file object gone; the mapping must survive
  EXPECT_FLOAT_EQ(view[1][2].item<float>(), -7.25f);
  EXPECT_FLOAT_EQ(view.sum().item<float>(), 1.f - 2.f + 3.5f + 1e-3f - 7.25f);
}

TEST_F(SanaSafetensors, MisalignedDataStillLoads) {
  // Header padding of 1..7 bytes puts the f32 data at every alignment.
  for (int pad = 0; pad < 8; ++pad) {
    SCOPED_TRACE(pad);
    const SafetensorsFile f = SafetensorsFile::Open(Write(BuildFile(SampleEntries(), {}, pad)));
    EXPECT_FLOAT_EQ(f.View("w.f32")[1][1].item<float>(), 1e-3f);
    EXPECT_FLOAT_EQ(f.Load("w.bf16", at::kFloat)[3].item<float>(), 3.f);
    EXPECT_EQ(f.View("mask")[2].item<int64_t>(), -5);
  }
}

TEST_F(SanaSafetensors, CheckTensorsReportsAllProblemsInOneMessage) {
  const std::vector<Entry> entries = {
      {"x_embedder.proj.weight", "F32", {64, 8, 1, 1, 1}, std::string(64 * 8 * 4, '\0')},
      {"foo", "F32", {1}, std::string(4, '\0')},
      {"raymap_embedder.proj.weight", "F32", {1}, std::string(4, '\0')},
      {"ok", "F32", {2}, std::string(8, '\0')},
  };
  const std::string path = Write(BuildFile(entries), "weights.safetensors");
  const SafetensorsFile f = SafetensorsFile::Open(path);
  const std::map<std::string, std::vector<int64_t>> expected = {
      {"blocks.3.attn.qkv.weight", {192, 64}},
      {"blocks.3.attn.proj.bias", {64}},
      {"x_embedder.proj.weight", {64, 4, 1, 1, 1}},
      {"ok", {2}},
      {"y_embedder.y_embedding", {8, 32}},
  };
  try {
    f.CheckTensors(expected, {"raymap_embedder.*", "y_embedder.y_embedding"});
    FAIL() << "no error";
  } catch (const SafetensorsError& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.substr(message.find("weights.safetensors")),
              "weights.safetensors: 2 missing (blocks.3.attn.proj.bias [64], "
              "blocks.3.attn.qkv.weight [192,64]), 1 unexpected (foo), 1 mis-shaped "
              "(x_embedder.proj.weight: file [64,8,1,1,1], model [64,4,1,1,1])");
  }
  // All good once the expectations match.
  EXPECT_NO_THROW(f.CheckTensors({{"x_embedder.proj.weight", {64, 8, 1, 1, 1}}, {"ok", {2}}},
                                 {"foo", "raymap_embedder.*"}));
}

// Each corrupt file must give a SafetensorsError with the given text, never a crash.
TEST_F(SanaSafetensors, CorruptFilesAreErrors) {
  const std::string f32x2 = Raw<float>({1.f, 2.f});
  auto tensor = [](const std::string& body) { return "{\"t\":" + body + "}"; };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {std::string("abc"), "too short for the 8-byte header length"},
      {FileBytes("", ""), "header length is 0"},
      {std::string("\xff\xff\xff\xff\xff\xff\xff\x7f{}", 10), "exceeds"},
      {std::string("\x40\x00\x00\x00\x00\x00\x00\x00{}", 10), "runs past the end"},
      {FileBytes("{\"t\":", ""), "invalid header: json: line 1"},
      {FileBytes("[]", ""), "header is an array, expected an object"},
      {FileBytes(tensor("1"), ""), "tensor 't' is not an object"},
      {FileBytes(tensor(R"({"dtype":"F32","shape":[2]})"), f32x2), "needs 'dtype', 'shape'"},
      {FileBytes(tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1})"), f32x2),
       "unknown field 'x'"},
      {FileBytes(tensor(R"({"dtype":"Q8","shape":[2],"data_offsets":[0,8]})"), f32x2),
       "unknown dtype 'Q8'"},
      {FileBytes(tensor(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"), f32x2),
       "non-negative integers"},
      {FileBytes(tensor(R"({"dtype":"F32","shape":[2.5],"data_offsets":[0,8]})"), f32x2),
       "non-negative integers"},
      {FileBytes(tensor(R"({"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]})"),
                 f32x2),
       "overflows"},
      {FileBytes(tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[0]})"), f32x2),
       "data_offsets must be [begin, end]"},
      {FileBytes(tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[8,0]})"), f32x2),
       "end before they begin"},
      {FileBytes(tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[0,16]})"), f32x2),
       "run past the 8-byte data buffer"},
      {FileBytes(tensor(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), f32x2),
       "span 8 bytes but F32 [3] needs 12"},
      {FileBytes(tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), f32x2 + "xx"),
       "data buffer is 10 bytes but the tensors cover 8"},
      {FileBytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                 R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                 f32x2),
       "overlaps"},
      {FileBytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", f32x2),
       "hole of 4 bytes before tensor 'a'"},
      {FileBytes(R"({"__metadata__":{"k":1}})", ""), "__metadata__ entry 'k' is a number"},
      {FileBytes(R"({"__metadata__":[]})", ""), "__metadata__ is not an object"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i) + ": " + cases[i].second);
    const std::string path = Write(cases[i].first);
    try {
      SafetensorsFile::Open(path);
      ADD_FAILURE() << "no error";
    } catch (const SafetensorsError& e) {
      EXPECT_THAT(e.what(), HasSubstr(cases[i].second));
      EXPECT_THAT(e.what(), HasSubstr(path));
    }
  }
  EXPECT_THROW(SafetensorsFile::Open(::testing::TempDir() + "/does-not-exist.safetensors"),
               SafetensorsError);
  EXPECT_THROW(SafetensorsFile::Open(::testing::TempDir()), SafetensorsError);  // a directory
}

TEST_F(SanaSafetensors, TruncatedAndBitFlippedFilesNeverCrash) {
  const std::string good = BuildFile(SampleEntries(), {{"config", "{}"}});
  // Every truncation is an error.
  for (size_t len = 0; len < good.size(); len += 7) {
    EXPECT_THROW(SafetensorsFile::Open(Write(good.substr(0, len))), SafetensorsError) << len;
  }
  // Random byte flips anywhere: either a clean error or a file whose tensors all load.
  std::mt19937 rng(20260516);
  int opened = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::string bad = good;
    const size_t at = rng() % bad.size();
    bad[at] = static_cast<char>(rng() & 0xff);
    const std::string path = Write(bad);
    try {
      const SafetensorsFile f = SafetensorsFile::Open(path);
      ++opened;
      for (const std::string& name : f.names()) {
        if (f.Info(name).dtype == "I32") continue;
        if (f.Info(name).dtype != "F32" && f.Info(name).dtype != "BF16" &&
            f.Info(name).dtype != "F16" && f.Info(name).dtype != "I64") {
          EXPECT_THROW(f.Load(name), SafetensorsError);
          continue;
        }
        EXPECT_EQ(f.Load(name).numel(), f.Info(name).numel());
      }
    } catch (const SafetensorsError&) {
    }
  }
  EXPECT_GT(opened, 0);  // flips in the data region keep the file valid
}

// ---------------------------------------------------------------------------------------------
// Golden files (skipped when absent).

TEST(SanaSafetensorsGolden, OpensEveryGoldenFile) {
  const std::string dir = SanaGoldenDir();
  if (!std::ifstream(dir + "/weights.safetensors").good()) {
    GTEST_SKIP() << "golden data not found in " << dir << " (set WMSERVE_GOLDEN_ROOT)";
  }
  const SafetensorsFile weights = SafetensorsFile::Open(dir + "/weights.safetensors");
  EXPECT_EQ(weights.size(), 361u);
  int64_t values = 0;
  for (const std::string& name : weights.names()) values += weights.Info(name).numel();
  EXPECT_EQ(values, 961616);
  EXPECT_EQ(weights.Info("blocks.0.attn.qkv.weight").shape, (std::vector<int64_t>{192, 64}));
  EXPECT_EQ(weights.Info("blocks.0.attn.conv_k.weight").shape, (std::vector<int64_t>{64, 1, 4}));
  EXPECT_FALSE(weights.Contains("blocks.3.attn.conv_k.weight"));  // softmax block
  EXPECT_EQ(weights.Info("plucker_embedder.proj.weight").shape,
            (std::vector<int64_t>{64, 48, 1, 1, 1}));
  EXPECT_NO_THROW(ParseJson(weights.Metadata("config")));
  EXPECT_EQ(weights.Load("final_layer.scale_shift_table").sizes(), (std::vector<int64_t>{2, 64}));

  const SafetensorsFile bidi = SafetensorsFile::Open(dir + "/bidirectional.safetensors");
  EXPECT_EQ(bidi.size(), 119u);
  EXPECT_EQ(bidi.Load("input.encoder_attention_mask").scalar_type(), at::kLong);
  EXPECT_EQ(SafetensorsFile::Open(dir + "/camera.safetensors").size(), 11u);
  EXPECT_EQ(SafetensorsFile::Open(dir + "/gdn_layer.safetensors").size(), 56u);
}

}  // namespace
}  // namespace wmserve::worker::sana
