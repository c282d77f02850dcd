// End to end with a real Prometheus server: wmserve-scheduler with two local workers exports the
// worker targets as a file_sd file (--file-sd-path), a prometheus process on loopback scrapes the
// scheduler (static target) and the workers (file_sd) every second with deploy/prometheus/
// alerts.yml loaded, and after three warp rollouts the Prometheus HTTP API must report what the
// client saw (frames, time-to-first-chunk count, rollouts, chunks) plus the per-worker series
// (memory with gpu/UUID labels, state, build info). Every /metrics page must also pass
// `promtool check metrics`, the alert rules must evaluate without errors and every query of
// deploy/grafana/wmserve-dashboard.json must evaluate on the live data. Skipped when
// /usr/bin/prometheus or /usr/bin/promtool is missing.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/rollout_client.h"
#include "client/trajectory_presets.h"
#include "tests/e2e/process_harness.h"
#include "worker/media/image_io.h"

namespace wmserve::testing {
namespace {

constexpr char kPrometheusBinary[] = "/usr/bin/prometheus";
constexpr char kPromtoolBinary[] = "/usr/bin/promtool";
constexpr int kWidth = 320;
constexpr int kHeight = 176;

// ----- A minimal JSON reader (Prometheus API responses, the file_sd file) ------------------------

struct Json {
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
  Type type = Type::kNull;
  bool boolean = false;
  double number = 0;
  std::string str;
  std::vector<Json> items;                            // kArray
  std::vector<std::pair<std::string, Json>> members;  // kObject, in order

  // The member `key` of an object, or nullptr (also when this is not an object).
  const Json* Get(absl::string_view key) const {
    if (type != Type::kObject) return nullptr;
    for (const auto& [k, v] : members) {
      if (k == key) return &v;
    }
    return nullptr;
  }
  // The string member `key`, or "" when absent or not a string.
  std::string GetString(absl::string_view key) const {
    const Json* v = Get(key);
    return v != nullptr && v->type == Type::kString ? v->str : std::string();
  }
};

class JsonReader {
 public:
  static absl::StatusOr<Json> Parse(absl::string_view text) {
    JsonReader r(text);
    Json out;
    if (!r.Value(&out, 0)) return r.Error();
    r.SkipSpace();
    if (r.pos_ != text.size()) {
      r.Fail("trailing characters");
      return r.Error();
    }
    return out;
  }

 private:
  explicit JsonReader(absl::string_view text) : text_(text) {}

  absl::Status Error() const {
    return absl::InvalidArgumentError(
        absl::StrCat("JSON: ", error_, " at offset ", pos_, " in: ", text_.substr(0, 400)));
  }
  bool Fail(const std::string& what) {
    if (error_.empty()) error_ = what;
    return false;
  }
  void SkipSpace() {
    while (pos_ < text_.size() && absl::ascii_isspace(static_cast<unsigned char>(text_[pos_]))) {
      ++pos_;
    }
  }
  bool Consume(char c) {
    SkipSpace();
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool Literal(absl::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return Fail("bad literal");
    pos_ += word.size();
    return true;
  }

  bool Value(Json* out, int depth) {
    if (depth > 64) return Fail("nested too deeply");
    SkipSpace();
    if (pos_ >= text_.size()) return Fail("unexpected end");
    const char c = text_[pos_];
    if (c == '{') return Object(out, depth);
    if (c == '[') return Array(out, depth);
    if (c == '"') {
      out->type = Json::Type::kString;
      return String(&out->str);
    }
    if (c == 't' || c == 'f') {
      out->type = Json::Type::kBool;
      out->boolean = c == 't';
      return Literal(c == 't' ? "true" : "false");
    }
    if (c == 'n') {
      out->type = Json::Type::kNull;
      return Literal("null");
    }
    const size_t start = pos_;
    while (pos_ < text_.size() && std::strchr("+-0123456789.eE", text_[pos_]) != nullptr) ++pos_;
    out->type = Json::Type::kNumber;
    if (pos_ == start || !absl::SimpleAtod(text_.substr(start, pos_ - start), &out->number)) {
      return Fail("bad number");
    }
    return true;
  }

  bool Object(Json* out, int depth) {
    out->type = Json::Type::kObject;
    ++pos_;  // '{'
    if (Consume('}')) return true;
    do {
      SkipSpace();
      std::string key;
      if (pos_ >= text_.size() || text_[pos_] != '"' || !String(&key)) return Fail("bad key");
      if (!Consume(':')) return Fail("expected ':'");
      Json value;
      if (!Value(&value, depth + 1)) return false;
      out->members.emplace_back(std::move(key), std::move(value));
    } while (Consume(','));
    return Consume('}') || Fail("expected '}'");
  }

  bool Array(Json* out, int depth) {
    out->type = Json::Type::kArray;
    ++pos_;  // '['
    if (Consume(']')) return true;
    do {
      Json value;
      if (!Value(&value, depth + 1)) return false;
      out->items.push_back(std::move(value));
    } while (Consume(','));
    return Consume(']') || Fail("expected ']'");
  }

  bool String(std::string* out) {
    ++pos_;  // opening quote
    while (pos_ < text_.size()) {
      const char c = text_[pos_++];
      if (c == '"') return true;
      if (c != '\\') {
        out->push_back(c);
        continue;
      }
      if (pos_ >= text_.size()) break;
      const char e = text_[pos_++];
      switch (e) {
        case '"': case '\\': case '/': out->push_back(e); break;
        case 'b': out->push_back('\b'); break;
        case 'f': out->push_back('\f'); break;
        case 'n': out->push_back('\n'); break;
        case 'r': out->push_back('\r'); break;
        case 't': out->push_back('\t'); break;
        case 'u': {
          // BMP code point to UTF-8 (surrogate pairs are not needed for our inputs).
          uint32_t cp = 0;
          if (pos_ + 4 > text_.size()) return Fail("bad \\u escape");
          for (int i = 0; i < 4; ++i) {
            const char h = text_[pos_++];
            cp <<= 4;
            if (h >= '0' && h <= '9') cp |= h - '0';
            else if (h >= 'a' && h <= 'f') cp |= h - 'a' + 10;
            else if (h >= 'A' && h <= 'F') cp |= h - 'A' + 10;
            else return Fail("bad \\u escape");
          }
          if (cp < 0x80) {
            out->push_back(static_cast<char>(cp));
          } else if (cp < 0x800) {
            out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
            out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
          } else {
            out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
            out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
            out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
          }
          break;
        }
        default: return Fail("bad escape");
      }
    }
    return Fail("unterminated string");
  }

  absl::string_view text_;
  size_t pos_ = 0;
  std::string error_;
};

// ----- Processes, ports, files -------------------------------------------------------------------

std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool WriteWholeFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  return static_cast<bool>(out);
}

// A loopback TCP port that was free a moment ago (bind port 0, read it back, close).
absl::StatusOr<int> FreeLoopbackPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const std::string err = std::strerror(errno);
    ::close(fd);
    return absl::InternalError("bind/getsockname: " + err);
  }
  ::close(fd);
  return static_cast<int>(ntohs(addr.sin_port));
}

// Percent-encodes everything but RFC 3986 unreserved characters (for a URL query value).
std::string UrlEncode(absl::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (const char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (absl::ascii_isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out.push_back(ch);
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

// `prometheus` on a loopback port with its own config and TSDB directory; SIGTERM on destruction
// (SIGKILL if it does not exit within 15 s). Dies with the test binary (PR_SET_PDEATHSIG).
class PrometheusProcess {
 public:
  static absl::StatusOr<std::unique_ptr<PrometheusProcess>> Start(const std::string& dir,
                                                                   const std::string& config) {
    std::unique_ptr<PrometheusProcess> p(new PrometheusProcess());
    p->log_path_ = dir + "/prometheus.log";
    const std::string config_path = dir + "/prometheus.yml";
    if (!WriteWholeFile(config_path, config)) return absl::InternalError("cannot write config");
    auto port = FreeLoopbackPort();
    if (!port.ok()) return port.status();
    p->address_ = absl::StrCat("127.0.0.1:", *port);
    std::vector<std::string> argv = {kPrometheusBinary,
                                     "--config.file=" + config_path,
                                     "--storage.tsdb.path=" + dir + "/tsdb",
                                     "--web.listen-address=" + p->address_,
                                     "--log.level=info"};
    p->pid_ = SpawnLogged(argv, p->log_path_);
    if (p->pid_ < 0) return absl::InternalError("fork failed");

    // Ready when GET /-/ready says so (503 "Service Unavailable" while starting).
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    for (;;) {
      int status = 0;
      if (::waitpid(p->pid_, &status, WNOHANG) == p->pid_) {
        p->pid_ = -1;
        return absl::InternalError(absl::StrCat("prometheus exited at start:\n", p->Log()));
      }
      auto body = HttpGet(p->address_, "/-/ready");
      if (body.ok() && absl::StrContains(*body, "is Ready")) return p;
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError(absl::StrCat("prometheus not ready:\n", p->Log()));
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
  }

  ~PrometheusProcess() { Stop(); }

  // SIGTERM, wait up to 15 s, then SIGKILL. Returns the exit code (128+signal if killed).
  int Stop() {
    if (pid_ <= 0) return exit_code_;
    ::kill(pid_, SIGTERM);
    const absl::Time deadline = absl::Now() + absl::Seconds(15);
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) != pid_) {
      if (absl::Now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        break;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    pid_ = -1;
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return exit_code_;
  }

  const std::string& address() const { return address_; }
  std::string Log() const { return ReadWholeFile(log_path_); }

  // GET /api/v1/<path>?<query> and the parsed response if its status is "success".
  absl::StatusOr<Json> Api(const std::string& path_and_query) const {
    auto body = HttpGet(address_, "/api/v1/" + path_and_query);
    if (!body.ok()) return body.status();
    auto json = JsonReader::Parse(*body);
    if (!json.ok()) return json.status();
    if (json->GetString("status") != "success") {
      return absl::FailedPreconditionError(absl::StrCat("prometheus API: ", *body));
    }
    return json;
  }

  // The instant vector of `expr`: one (labels, value) per series.
  struct Sample {
    std::map<std::string, std::string> labels;
    double value = 0;
  };
  absl::StatusOr<std::vector<Sample>> Query(const std::string& expr) const {
    auto json = Api("query?query=" + UrlEncode(expr));
    if (!json.ok()) return json.status();
    const Json* data = json->Get("data");
    const Json* result = data != nullptr ? data->Get("result") : nullptr;
    if (result == nullptr || result->type != Json::Type::kArray ||
        data->GetString("resultType") != "vector") {
      return absl::DataLossError("query " + expr + ": not an instant vector");
    }
    std::vector<Sample> out;
    for (const Json& r : result->items) {
      Sample s;
      if (const Json* metric = r.Get("metric"); metric != nullptr) {
        for (const auto& [k, v] : metric->members) s.labels[k] = v.str;
      }
      const Json* value = r.Get("value");  // [ unix_time, "value" ]
      if (value == nullptr || value->items.size() != 2 ||
          !absl::SimpleAtod(value->items[1].str, &s.value)) {
        return absl::DataLossError("query " + expr + ": bad sample");
      }
      out.push_back(std::move(s));
    }
    return out;
  }

 private:
  PrometheusProcess() = default;
  pid_t pid_ = -1;
  int exit_code_ = -1;
  std::string address_;
  std::string log_path_;
};

// ----- Requests ----------------------------------------------------------------------------------

// ----- The test ----------------------------------------------------------------------------------

class PrometheusE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::access(kPrometheusBinary, X_OK) != 0 || ::access(kPromtoolBinary, X_OK) != 0) {
      GTEST_SKIP() << kPrometheusBinary << " or " << kPromtoolBinary
                   << " is not installed (Debian package `prometheus`); skipping the "
                      "Prometheus end-to-end test";
    }
    dir_ = MakeTempDir();
    file_sd_path_ = dir_ + "/workers.json";
  }

  void TearDown() override {
    if (!HasFailure()) return;
    if (scheduler_) std::cerr << "---- scheduler log ----\n" << scheduler_->Log();
    if (prometheus_) {
      const std::string log = prometheus_->Log();
      std::cerr << "---- prometheus log (tail) ----\n"
                << log.substr(log.size() > 6000 ? log.size() - 6000 : 0);
    }
    std::cerr << "---- " << file_sd_path_ << " ----\n" << ReadWholeFile(file_sd_path_) << "\n";
  }

  // Fetches host_port/metrics into a file and lints it with `promtool check metrics`.
  void CheckMetricsPage(const std::string& what, const std::string& host_port) {
    SCOPED_TRACE(what + " " + host_port);
    auto text = HttpGet(host_port, "/metrics");
    ASSERT_TRUE(text.ok()) << text.status();
    ASSERT_TRUE(absl::StrContains(*text, "wmserve_build_info")) << *text;
    const std::string path = absl::StrCat(dir_, "/metrics-", what, "-", ++pages_, ".txt");
    ASSERT_TRUE(WriteWholeFile(path, *text));
    std::string output;
    const int rc = RunCommand(
        {"/bin/sh", "-c", absl::StrCat(kPromtoolBinary, " check metrics < '", path, "'")}, &output);
    EXPECT_EQ(rc, 0) << "promtool check metrics on " << what << " /metrics:\n" << output;
  }

  std::string dir_;
  std::string file_sd_path_;
  int pages_ = 0;
  std::unique_ptr<SchedulerProcess> scheduler_;
  std::unique_ptr<PrometheusProcess> prometheus_;
};

TEST_F(PrometheusE2E, PrometheusScrapesSchedulerAndFileSdWorkersAndSeesTheRollouts) {
  // --- wmserve: scheduler + 2 local CPU workers, the worker targets written as file_sd.
  SchedulerConfig config;
  config.local_workers = 2;
  config.extra_args = {"--file-sd-path", file_sd_path_};
  auto started = SchedulerProcess::Start(config);
  ASSERT_TRUE(started.ok()) << started.status();
  scheduler_ = *std::move(started);
  ASSERT_TRUE(scheduler_->WaitForReadyWorkers(2, absl::Seconds(60)).ok()) << scheduler_->Log();
  ASSERT_FALSE(scheduler_->metrics_address().empty());

  auto workers = scheduler_->Workers();
  ASSERT_TRUE(workers.ok()) << workers.status();
  std::map<std::string, v1::WorkerInfo> by_endpoint;  // metrics endpoint -> worker
  for (const auto& w : workers->workers()) {
    ASSERT_FALSE(w.metrics_endpoint().empty()) << "worker " << w.worker_id() << " has no /metrics";
    by_endpoint[w.metrics_endpoint()] = w;
  }
  ASSERT_EQ(by_endpoint.size(), 2u);

  // --- The file_sd file: one target per worker (its metrics endpoint) with worker_id,
  // worker_name and device labels. Written when workers register, so poll briefly.
  std::map<std::string, std::map<std::string, std::string>> sd_targets;  // target -> labels
  std::string sd_error = "file not written";
  for (const absl::Time deadline = absl::Now() + absl::Seconds(15);;) {
    sd_targets.clear();
    auto json = JsonReader::Parse(ReadWholeFile(file_sd_path_));
    if (!json.ok()) {
      sd_error = json.status().ToString();
    } else if (json->type != Json::Type::kArray) {
      sd_error = "not a JSON array";
    } else {
      for (const Json& group : json->items) {
        std::map<std::string, std::string> labels;
        if (const Json* l = group.Get("labels"); l != nullptr) {
          for (const auto& [k, v] : l->members) labels[k] = v.str;
        }
        if (const Json* t = group.Get("targets"); t != nullptr) {
          for (const Json& target : t->items) sd_targets[target.str] = labels;
        }
      }
      sd_error.clear();
      if (sd_targets.size() == by_endpoint.size()) break;
    }
    if (absl::Now() > deadline) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_EQ(sd_error, "") << "file_sd file " << file_sd_path_;
  ASSERT_EQ(sd_targets.size(), by_endpoint.size()) << ReadWholeFile(file_sd_path_);
  for (const auto& [endpoint, worker] : by_endpoint) {
    SCOPED_TRACE("worker " + worker.worker_id() + " at " + endpoint);
    auto it = sd_targets.find(endpoint);
    ASSERT_NE(it, sd_targets.end()) << "missing from " << ReadWholeFile(file_sd_path_);
    EXPECT_EQ(it->second["worker_id"], worker.worker_id());
    EXPECT_EQ(it->second["worker_name"], worker.name());
    EXPECT_EQ(it->second["device"], worker.device());
  }

  // --- Every /metrics page is valid exposition format (before any rollout).
  CheckMetricsPage("scheduler", scheduler_->metrics_address());
  for (const auto& [endpoint, worker] : by_endpoint) CheckMetricsPage("worker", endpoint);

  // --- Prometheus: scheduler static, workers via the scheduler's file, our alert rules loaded.
  const std::string prom_dir = dir_ + "/prometheus";
  ASSERT_EQ(::mkdir(prom_dir.c_str(), 0755), 0);
  const std::string rules = std::string(WMSERVE_SOURCE_DIR) + "/deploy/prometheus/alerts.yml";
  const std::string prom_config = absl::StrCat(
      "global:\n"
      "  scrape_interval: 1s\n"
      "  scrape_timeout: 1s\n"
      "  evaluation_interval: 1s\n"
      "rule_files:\n"
      "  - '", rules, "'\n"
      "scrape_configs:\n"
      "  - job_name: wmserve-scheduler\n"
      "    static_configs:\n"
      "      - targets: ['", scheduler_->metrics_address(), "']\n"
      "  - job_name: wmserve-worker\n"
      "    file_sd_configs:\n"
      "      - files: ['", file_sd_path_, "']\n"
      "        refresh_interval: 1s\n");
  auto prom = PrometheusProcess::Start(prom_dir, prom_config);
  ASSERT_TRUE(prom.ok()) << prom.status();
  prometheus_ = *std::move(prom);

  // Let Prometheus scrape all three targets once before the traffic, so the rollouts show up as
  // increases (rate) and not only as the first sample. Not asserted here: the expectations below
  // report a target that never came up.
  auto targets_up = [&](int want, const std::string& expr) {
    for (const absl::Time until = absl::Now() + absl::Seconds(20); absl::Now() < until;) {
      auto up = prometheus_->Query(expr);
      if (up.ok() && up->size() == 1 && up->front().value >= want) return true;
      absl::SleepFor(absl::Milliseconds(200));
    }
    return false;
  };
  if (!targets_up(3, "count(up == 1)")) {
    ADD_FAILURE() << "Prometheus did not see 3 targets up within 20 s (continuing)";
  }

  // --- Three rollouts, one after another; record what the client saw.
  const media::RgbImage image = MakeTestImage(kWidth, kHeight, 5);
  const v1::RolloutRequest requests[] = {
      MakeWarpRequest(client::TrajectoryPreset::kYaw, 16, 5, image),
      MakeWarpRequest(client::TrajectoryPreset::kPan, 20, 0.2, image),
      MakeWarpRequest(client::TrajectoryPreset::kForward, 24, 0.3, image),
  };
  constexpr int kRollouts = 3;
  int total_frames = 0;
  int total_chunks = 0;
  for (const v1::RolloutRequest& req : requests) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    const client::RolloutResult r = client::RunRollout(scheduler_->stub(), req, {}, &ctx);
    ASSERT_TRUE(r.ok()) << client::FormatStatus(r.status);
    ASSERT_EQ(r.final.frames_sent(), req.num_frames());
    total_frames += static_cast<int>(r.final.frames_sent());
    total_chunks += static_cast<int>(r.chunks.size());
  }
  ASSERT_EQ(total_frames, 16 + 20 + 24);

  // --- Lint the pages again, now with histograms and counters populated.
  CheckMetricsPage("scheduler", scheduler_->metrics_address());
  for (const auto& [endpoint, worker] : by_endpoint) CheckMetricsPage("worker", endpoint);

  // --- What Prometheus must report. Each query yields one number; poll until all match (scrapes
  // are 1 s apart, file_sd is re-read every second), then report each one that did not.
  struct Expectation {
    std::string what;
    std::string query;
    double want;
    std::string last = "no data";
    bool met = false;
  };
  std::vector<Expectation> expectations = {
      {"scheduler target up", R"(count(up{job="wmserve-scheduler"} == 1))", 1},
      {"both file_sd worker targets up", R"(count(up{job="wmserve-worker"} == 1))", 2},
      {"file_sd labels on worker series",
       R"(count(count by (worker_id, worker_name, device) )"
       R"((up{job="wmserve-worker", worker_id!="", worker_name!="", device="cpu"})))",
       2},
      {"frames encoded = frames the client received",
       R"(sum(wmserve_frames_generated_total{job="wmserve-worker", stage="video_encode"}))",
       static_cast<double>(total_frames)},
      {"time-to-first-chunk observations = rollouts",
       R"(sum(wmserve_time_to_first_chunk_seconds_count{job="wmserve-scheduler"}))", kRollouts},
      {"realtime factor observations = rollouts",
       R"(sum(wmserve_realtime_factor_count{job="wmserve-scheduler"}))", kRollouts},
      {"succeeded rollouts",
       R"(sum(wmserve_rollouts_total{job="wmserve-scheduler", outcome="succeeded"}))", kRollouts},
      {"chunks sent = chunks the client received",
       R"(sum(wmserve_chunks_sent_total{job="wmserve-scheduler"}))",
       static_cast<double>(total_chunks)},
      {"workers with gpu/UUID-labelled memory series",
       R"(count(count by (instance) )"
       R"((wmserve_gpu_memory_bytes{job="wmserve-worker", gpu!="", UUID!=""})))",
       2},
      {"CPU workers' memory as gpu=\"cpu\", UUID=\"CPU-<host>\", pool=\"process_resident\"",
       R"(count(count by (instance) (wmserve_gpu_memory_bytes{job="wmserve-worker", gpu="cpu", )"
       R"(UUID=~"CPU-.+", pool="process_resident"} > 0)))",
       2},
      {"workers in state READY", R"(count(wmserve_worker_state{job="wmserve-worker", state="READY"} == 1))",
       2},
      {"worker build_info with model=warp",
       R"(count(wmserve_build_info{job="wmserve-worker", component="worker", model="warp"}))", 2},
  };
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  for (bool all_met = false; !all_met && absl::Now() < deadline;) {
    all_met = true;
    for (Expectation& e : expectations) {
      if (e.met) continue;
      auto samples = prometheus_->Query(e.query);
      if (!samples.ok()) {
        e.last = samples.status().ToString();
      } else if (samples->empty()) {
        e.last = "no data";
      } else {
        e.last = absl::StrCat(samples->front().value);
        e.met = samples->size() == 1 && std::abs(samples->front().value - e.want) < 1e-9;
      }
      all_met = all_met && e.met;
    }
    if (!all_met) absl::SleepFor(absl::Milliseconds(500));
  }
  for (const Expectation& e : expectations) {
    EXPECT_TRUE(e.met) << e.what << ": `" << e.query << "` = " << e.last << " after 30 s, want "
                       << e.want;
  }

  // --- The alert rules evaluate cleanly against the live series (no "err" health).
  auto rules_json = prometheus_->Api("rules?type=alert");
  ASSERT_TRUE(rules_json.ok()) << rules_json.status();
  int rule_count = 0;
  const Json* groups = rules_json->Get("data") ? rules_json->Get("data")->Get("groups") : nullptr;
  ASSERT_NE(groups, nullptr);
  for (const Json& g : groups->items) {
    const Json* rs = g.Get("rules");
    if (rs == nullptr) continue;
    for (const Json& rule : rs->items) {
      ++rule_count;
      EXPECT_NE(rule.GetString("health"), "err")
          << "alert " << rule.GetString("name") << ": " << rule.GetString("lastError");
    }
  }
  EXPECT_GE(rule_count, 5) << "deploy/prometheus/alerts.yml not loaded";

  // --- Every query of the Grafana dashboard evaluates on the live data (Grafana's
  // $__rate_interval as 1m) and, except the CUDA/DCGM-only ones, returns series.
  const std::string dashboard_path =
      std::string(WMSERVE_SOURCE_DIR) + "/deploy/grafana/wmserve-dashboard.json";
  auto dashboard = JsonReader::Parse(ReadWholeFile(dashboard_path));
  ASSERT_TRUE(dashboard.ok()) << dashboard.status();
  const Json* panels = dashboard->Get("panels");
  ASSERT_NE(panels, nullptr) << dashboard_path;
  // Range functions need two samples of every series in the window.
  EXPECT_TRUE(targets_up(3, "min(count_over_time(up[1m]))")) << "fewer than 3 scrapes";
  int dashboard_queries = 0;
  for (const Json& panel : panels->items) {
    const Json* targets = panel.Get("targets");
    if (targets == nullptr) continue;
    for (const Json& target : targets->items) {
      std::string expr = target.GetString("expr");
      SCOPED_TRACE(absl::StrCat("dashboard panel \"", panel.GetString("title"), "\" query ",
                                target.GetString("refId"), ": ", expr));
      for (size_t at; (at = expr.find("$__rate_interval")) != std::string::npos;) {
        expr.replace(at, std::string("$__rate_interval").size(), "1m");
      }
      ++dashboard_queries;
      const bool cuda_only =
          absl::StrContains(expr, "DCGM_") || absl::StrContains(expr, "pool=~\"weights");
      // Series the rollouts created (per-stage histograms) need two scrapes before rate() sees
      // them: poll, bounded, before judging.
      auto samples = prometheus_->Query(expr);
      for (const absl::Time until = absl::Now() + absl::Seconds(15);
           !cuda_only && samples.ok() && samples->empty() && absl::Now() < until;) {
        absl::SleepFor(absl::Milliseconds(500));
        samples = prometheus_->Query(expr);
      }
      ASSERT_TRUE(samples.ok()) << samples.status();
      if (!cuda_only) {
        EXPECT_FALSE(samples->empty()) << "no series on CPU workers";
      }
    }
  }
  EXPECT_GE(dashboard_queries, 7);

  // --- Clean shutdown of both; the scheduler leaves an empty target list behind.
  EXPECT_EQ(prometheus_->Stop(), 0) << prometheus_->Log();
  auto code = scheduler_->SignalAndWait(SIGTERM, absl::Seconds(40));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0);
  auto sd_after = JsonReader::Parse(ReadWholeFile(file_sd_path_));
  ASSERT_TRUE(sd_after.ok()) << sd_after.status();
  int targets_after = 0;
  for (const Json& group : sd_after->items) {
    if (const Json* t = group.Get("targets"); t != nullptr) {
      targets_after += static_cast<int>(t->items.size());
    }
  }
  EXPECT_EQ(targets_after, 0) << "stale worker targets after shutdown:\n"
                              << ReadWholeFile(file_sd_path_);
}

}  // namespace
}  // namespace wmserve::testing
