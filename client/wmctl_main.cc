// wmctl: command-line client for the wmserve scheduler. See kUsage for the contract; scripts
// depend on the exact flag spellings, on the rollout id being the only thing `rollout` prints
// on stdout, and on every failure being exactly one `wmctl: <reason>` line on stderr.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "client/rollout_client.h"
#include "client/trajectory_file.h"
#include "client/trajectory_presets.h"

namespace wmserve::client {
namespace {

constexpr char kUsage[] =
    R"(usage: wmctl [--server HOST:PORT] <command> [flags]

Client for a wmserve scheduler. --server defaults to 127.0.0.1:50051.

commands:
  rollout --image IMG --trajectory FILE --out FILE [--model NAME] [--seed S]
          [--quality fast|balanced|high] [--width W --height H]
          [--option key=value ...] [--request-id ID]
          [--priority high|normal|low] [--tenant T] [--reattach-grace SECONDS]
          [--preview-out FILE]
      Render a video from the first frame IMG (PNG or JPEG) along the camera
      trajectory FILE (JSON, see `wmctl trajectory`). The fragmented MP4 is
      written to --out as chunks arrive, so it can be played while it grows.
      Progress goes to stderr; the rollout id is printed on stdout. Intrinsics
      are scaled when IMG's size differs from the file's image size.
      --model defaults to warp, --seed to 0; --width/--height (even, both or
      neither) default to the model's native size. Ctrl-C cancels the rollout.
      --preview-out asks for PREVIEW chunks (model option preview=on: sana-wm's
      un-refined Stage-1 video, sent ahead of each refined chunk) and writes them
      as a second fragmented MP4 to FILE.
      --request-id makes a resubmission join the same rollout; --reattach-grace
      keeps it running that long after a dropped connection (see attach).
  attach ID --out FILE [--from-chunk N]
      Continue a rollout after a dropped connection. With --from-chunk 0 (the
      default) FILE is rewritten from the start; with N > 0 the chunks from N
      on are appended to FILE (which holds the init segment and chunks < N).
  cancel ID
      Cancel a rollout; prints the state it ended in.
  status ID
      Print a rollout's state, progress and timings.
  workers
      One line per worker: id, device, models, state, running/max rollouts.
  trajectory yaw|pan|forward|orbit --frames N --out FILE [--degrees D]
          [--meters M] [--fps F] [--width W --height H] [--hfov DEG]
      Write a preset camera trajectory (frame 0 = identity, linear motion):
        yaw      turn in place by --degrees (default 30; positive = right)
        pan      move right (+x) by --meters (default 1)
        forward  move forward (+z) by --meters (default 2)
        orbit    circle a point --meters ahead (radius, default 3) by
                 --degrees of arc (default 90), looking at it
      --fps defaults to 16, --width/--height to 1280x704, --hfov (horizontal
      field of view) to 60 degrees.
  help
      Show this text (also --help).

Exit status: 0 success, 1 failure, 2 bad usage, 130 cancelled by Ctrl-C.
)";

constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;
constexpr int kExitCancelled = 130;
constexpr char kDefaultServer[] = "127.0.0.1:50051";
constexpr auto kUnaryTimeout = std::chrono::seconds(30);

int Fail(int exit_code, absl::string_view reason) {
  // Scripts read exactly one line; a multi-line server message must not break that.
  std::string line(reason);
  std::replace(line.begin(), line.end(), '\n', ' ');
  std::fprintf(stderr, "wmctl: %s\n", line.c_str());
  return exit_code;
}

// ----- Flag parsing --------------------------------------------------------------------------

template <typename T>
constexpr const char* NumberKind() {
  if (std::is_floating_point_v<T>) return "number";
  return std::is_signed_v<T> ? "integer" : "non-negative integer";
}

// Subcommand flags, all of which take a value, as `--name value` or `--name=value`.
class Flags {
 public:
  // `known` lists accepted names (without dashes); `repeatable` those that may repeat.
  static absl::StatusOr<Flags> Parse(const std::vector<std::string>& args,
                                     const std::set<std::string>& known,
                                     const std::set<std::string>& repeatable = {}) {
    Flags flags;
    for (size_t i = 0; i < args.size(); ++i) {
      absl::string_view arg = args[i];
      if (arg == "--help" || arg == "-h") {
        flags.help_ = true;
        continue;
      }
      if (!absl::ConsumePrefix(&arg, "--")) {
        flags.positional_.push_back(args[i]);
        continue;
      }
      std::string name(arg);
      std::optional<std::string> value;
      if (size_t eq = arg.find('='); eq != absl::string_view::npos) {
        name = std::string(arg.substr(0, eq));
        value = std::string(arg.substr(eq + 1));
      }
      if (known.count(name) == 0) return absl::InvalidArgumentError("unknown flag --" + name);
      if (!value.has_value()) {
        if (i + 1 >= args.size()) return absl::InvalidArgumentError("--" + name + " needs a value");
        value = args[++i];
      }
      std::vector<std::string>& values = flags.values_[name];
      if (!values.empty() && repeatable.count(name) == 0) {
        return absl::InvalidArgumentError("--" + name + " given more than once");
      }
      values.push_back(*std::move(value));
    }
    return flags;
  }

  bool help() const { return help_; }
  const std::vector<std::string>& positional() const { return positional_; }
  bool Has(const std::string& name) const { return values_.count(name) > 0; }

  const std::vector<std::string>& All(const std::string& name) const {
    static const std::vector<std::string> kEmpty;
    auto it = values_.find(name);
    return it == values_.end() ? kEmpty : it->second;
  }

  std::string Get(const std::string& name, const std::string& fallback = "") const {
    return Has(name) ? All(name).front() : fallback;
  }

  absl::StatusOr<std::string> Required(const std::string& name) const {
    if (!Has(name)) return absl::InvalidArgumentError("--" + name + " is required");
    return Get(name);
  }

  // Integer or floating-point value of `name`, or `fallback` when absent.
  template <typename T>
  absl::StatusOr<T> Number(const std::string& name, T fallback) const {
    if (!Has(name)) return fallback;
    const std::string text = Get(name);
    T value;
    bool ok;
    if constexpr (std::is_floating_point_v<T>) {
      ok = absl::SimpleAtod(text, &value);
    } else {
      ok = absl::SimpleAtoi(text, &value);
    }
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, ": not a valid ", NumberKind<T>(), ": \"", text, "\""));
    }
    return value;
  }

 private:
  bool help_ = false;
  std::vector<std::string> positional_;
  std::map<std::string, std::vector<std::string>> values_;
};

// Both --width and --height, or neither (then `fallback`).
absl::Status ParseSize(const Flags& flags, uint32_t fallback_w, uint32_t fallback_h,
                       uint32_t* width, uint32_t* height) {
  if (flags.Has("width") != flags.Has("height")) {
    return absl::InvalidArgumentError("--width and --height must be given together");
  }
  absl::StatusOr<uint32_t> w = flags.Number<uint32_t>("width", fallback_w);
  if (!w.ok()) return w.status();
  absl::StatusOr<uint32_t> h = flags.Number<uint32_t>("height", fallback_h);
  if (!h.ok()) return h.status();
  *width = *w;
  *height = *h;
  return absl::OkStatus();
}

absl::Status ExpectPositional(const Flags& flags, size_t count, absl::string_view what) {
  if (flags.positional().size() < count) return absl::InvalidArgumentError(absl::StrCat(what));
  if (flags.positional().size() > count) {
    return absl::InvalidArgumentError(
        absl::StrCat("unexpected argument \"", flags.positional()[count], "\""));
  }
  return absl::OkStatus();
}

// ----- Rollout: options ----------------------------------------------------------------------

absl::StatusOr<v1::Quality> ParseQuality(absl::string_view text) {
  if (text == "fast") return v1::QUALITY_FAST;
  if (text == "balanced") return v1::QUALITY_BALANCED;
  if (text == "high") return v1::QUALITY_HIGH;
  return absl::InvalidArgumentError(
      absl::StrCat("--quality: expected fast, balanced or high, got \"", text, "\""));
}

absl::Status ParseModelOptions(const Flags& flags, std::map<std::string, std::string>* out) {
  for (const std::string& option : flags.All("option")) {
    const size_t eq = option.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--option: expected key=value, got \"", option, "\""));
    }
    const std::string key = option.substr(0, eq);
    if (!out->emplace(key, option.substr(eq + 1)).second) {
      return absl::InvalidArgumentError(absl::StrCat("--option: key \"", key, "\" given twice"));
    }
  }
  return absl::OkStatus();
}

struct RolloutArgs {
  std::string model;
  std::string image_path;
  std::string trajectory_path;
  std::string out_path;
  uint64_t seed = 0;
  RequestOptions request_options;
  v1::Priority priority = v1::PRIORITY_UNSPECIFIED;
  std::string tenant;
  uint32_t reattach_grace_s = 0;
  std::string preview_path;  // "" = no previews
};

absl::StatusOr<RolloutArgs> ParseRolloutArgs(const Flags& flags) {
  RolloutArgs args;
  absl::Status status = ExpectPositional(flags, 0, "");
  if (!status.ok()) return status;
  args.model = flags.Get("model", "warp");
  absl::StatusOr<std::string> value = flags.Required("image");
  if (!value.ok()) return value.status();
  args.image_path = *value;
  if (value = flags.Required("trajectory"); !value.ok()) return value.status();
  args.trajectory_path = *value;
  if (value = flags.Required("out"); !value.ok()) return value.status();
  args.out_path = *value;
  absl::StatusOr<uint64_t> seed = flags.Number<uint64_t>("seed", 0);
  if (!seed.ok()) return seed.status();
  args.seed = *seed;

  v1::OutputOptions& output = args.request_options.output;
  if (flags.Has("quality")) {
    absl::StatusOr<v1::Quality> quality = ParseQuality(flags.Get("quality"));
    if (!quality.ok()) return quality.status();
    output.set_quality(*quality);
  }
  uint32_t width = 0;
  uint32_t height = 0;
  if (status = ParseSize(flags, 0, 0, &width, &height); !status.ok()) return status;
  output.set_width(width);
  output.set_height(height);
  if (status = ParseModelOptions(flags, &args.request_options.model_options); !status.ok()) {
    return status;
  }
  args.request_options.client_request_id = flags.Get("request-id");
  if (flags.Has("priority")) {
    const std::string p = flags.Get("priority");
    if (p == "high") args.priority = v1::PRIORITY_HIGH;
    else if (p == "normal") args.priority = v1::PRIORITY_NORMAL;
    else if (p == "low") args.priority = v1::PRIORITY_LOW;
    else return absl::InvalidArgumentError(absl::StrCat("--priority: expected high, normal or low, got \"", p, "\""));
  }
  args.tenant = flags.Get("tenant");
  absl::StatusOr<uint32_t> grace = flags.Number<uint32_t>("reattach-grace", 0);
  if (!grace.ok()) return grace.status();
  args.reattach_grace_s = *grace;
  args.preview_path = flags.Get("preview-out");
  if (!args.preview_path.empty()) {
    auto& options = args.request_options.model_options;
    const auto it = options.find("preview");
    if (it != options.end() && it->second != "on") {
      return absl::InvalidArgumentError("--preview-out: conflicts with --option preview=" +
                                        it->second);
    }
    options["preview"] = "on";
  }
  return args;
}

// ----- Rollout: output file ------------------------------------------------------------------

// The video file, written with plain write(2) + fsync(2) per segment so that a player reading
// it while it grows never sees a segment that is only partly on disk.
class OutputFile {
 public:
  explicit OutputFile(std::string path) : path_(std::move(path)) {}
  ~OutputFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  // `append`: continue an existing file (a re-attached rollout's later chunks).
  absl::Status Open(bool append = false) {
    fd_ = append ? ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC)
                 : ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) return Error(append ? "cannot open for appending" : "cannot create");
    appending_ = append;
    return absl::OkStatus();
  }

  absl::Status Append(absl::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t n = ::write(fd_, bytes.data(), bytes.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Error("write failed");
      bytes.remove_prefix(static_cast<size_t>(n));
      bytes_written_ += static_cast<uint64_t>(n);
    }
    if (::fsync(fd_) != 0 && errno != EINVAL) return Error("fsync failed");  // EINVAL: a pipe.
    return absl::OkStatus();
  }

  // Closes the file; removes it when nothing was written, so a rejected request leaves no empty
  // file behind. A partial video is kept: its complete chunks play.
  void Finish() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    if (bytes_written_ == 0 && !appending_) ::unlink(path_.c_str());
  }

  const std::string& path() const { return path_; }
  uint64_t bytes_written() const { return bytes_written_; }
  bool appending() const { return appending_; }

 private:
  absl::Status Error(absl::string_view what) const {
    return absl::ErrnoToStatus(errno, absl::StrCat(path_, ": ", what));
  }

  std::string path_;
  int fd_ = -1;
  bool appending_ = false;
  uint64_t bytes_written_ = 0;
};

// ----- Rollout: progress display -------------------------------------------------------------

std::string FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--";
  const int64_t total = std::llround(seconds);
  if (total < 60) return absl::StrCat(total, "s");
  return absl::StrFormat("%dm%02ds", total / 60, total % 60);
}

// Progress on stderr: on a terminal, one line redrawn in place; otherwise (logs, CI) a plain
// line per chunk so the output stays readable.
class ProgressDisplay {
 public:
  using Clock = std::chrono::steady_clock;

  explicit ProgressDisplay(uint32_t frames_total)
      : tty_(::isatty(STDERR_FILENO) == 1), frames_total_(frames_total) {}

  void OnAccepted(const v1::Accepted& accepted) {
    if (accepted.queue_position() > 0) {
      Show(absl::StrCat("queued at position ", accepted.queue_position()), /*force_line=*/true);
    }
  }
  void OnProgress(const v1::Progress& progress) {
    frames_done_ = std::max(frames_done_, progress.frames_done());
    if (progress.frames_total() > 0) frames_total_ = progress.frames_total();
    if (tty_) Show(Line(), false);
  }
  void OnInit(const v1::StreamInit& init) {
    start_ = Clock::now();
    // The model may produce fewer frames than poses (sana-wm's refiner drops frame 0).
    if (init.frames_total() > 0) frames_total_ = init.frames_total();
  }
  void OnChunk(const v1::VideoChunk& chunk) {
    ++chunks_;
    frames_done_ = std::max(frames_done_, chunk.first_frame() + chunk.frame_count());
    Show(Line(), true);
  }
  // Ends the redrawn line so what follows starts on a fresh one.
  void Done() {
    if (tty_ && drawn_) std::fputs("\n", stderr);
    drawn_ = false;
  }

 private:
  std::string Line() const {
    const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
    // A server may report progress past the end; never show more than the total.
    const uint32_t done = frames_total_ > 0 ? std::min(frames_done_, frames_total_) : frames_done_;
    std::string line = absl::StrFormat("frames %d/%d  chunks %d", done, frames_total_, chunks_);
    if (start_ != Clock::time_point() && elapsed > 0) {
      const double frame_rate = done / elapsed;
      const double eta = frame_rate > 0 ? (frames_total_ - done) / frame_rate : -1;
      absl::StrAppendFormat(&line, "  %.2f chunks/s  ETA %s", chunks_ / elapsed,
                            FormatDuration(eta));
    }
    return line;
  }

  void Show(const std::string& line, bool force_line) {
    if (tty_) {
      std::fprintf(stderr, "\r%s\x1b[K", line.c_str());  // Erase what the last draw left.
      drawn_ = true;
    } else if (force_line) {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
    std::fflush(stderr);
  }

  const bool tty_;
  bool drawn_ = false;
  uint32_t frames_done_ = 0;
  uint32_t frames_total_;
  int chunks_ = 0;
  Clock::time_point start_;
};

// ----- Rollout: Ctrl-C -----------------------------------------------------------------------

std::atomic<bool> g_interrupted{false};
static_assert(std::atomic<bool>::is_always_lock_free, "needed for use in a signal handler");

extern "C" void OnSigint(int) { g_interrupted.store(true); }

// Cancels `ctx` once SIGINT arrives. A handler cannot call TryCancel itself (not
// async-signal-safe), so a thread polls the flag. The handler resets to the default after the
// first signal: a second Ctrl-C kills wmctl if the cancel hangs.
class SigintCanceller {
 public:
  explicit SigintCanceller(grpc::ClientContext* ctx) {
    struct sigaction action = {};
    action.sa_handler = OnSigint;
    action.sa_flags = SA_RESTART | SA_RESETHAND;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &previous_);
    watcher_ = std::thread([this, ctx] {
      while (!stop_.load()) {
        if (g_interrupted.load()) {
          ctx->TryCancel();
          return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    });
  }
  ~SigintCanceller() {
    stop_.store(true);
    watcher_.join();
    sigaction(SIGINT, &previous_, nullptr);
  }
  SigintCanceller(const SigintCanceller&) = delete;
  SigintCanceller& operator=(const SigintCanceller&) = delete;

 private:
  struct sigaction previous_ = {};
  std::atomic<bool> stop_{false};
  std::thread watcher_;
};

// ----- Commands ------------------------------------------------------------------------------

struct Globals {
  std::string server = kDefaultServer;
};

std::unique_ptr<v1::RolloutService::Stub> MakeStub(const Globals& globals) {
  return v1::RolloutService::NewStub(MakeChannel(globals.server));
}

void SetUnaryDeadline(grpc::ClientContext* ctx) {
  ctx->set_deadline(std::chrono::system_clock::now() + kUnaryTimeout);
}

// Runs one Rollout or Attach stream (`run`) and writes it to `out` as it arrives, with progress
// on stderr and Ctrl-C cancelling the call; PREVIEW chunks go to `preview` (dropped without
// one). Returns the process exit code.
int StreamToFile(OutputFile& out, OutputFile* preview, uint32_t frames_total,
                 const std::function<RolloutResult(const RolloutCallbacks&, grpc::ClientContext*)>&
                     run) {
  grpc::ClientContext ctx;
  ProgressDisplay progress(frames_total);
  absl::Status write_status;
  auto append_to = [&](OutputFile& file, absl::string_view bytes) {
    if (!write_status.ok()) return;
    write_status = file.Append(bytes);
    if (!write_status.ok()) ctx.TryCancel();  // No point rendering what cannot be saved.
  };
  auto append = [&](absl::string_view bytes) { append_to(out, bytes); };
  RolloutCallbacks callbacks;
  callbacks.keep_video_bytes = false;
  callbacks.on_accepted = [&](const v1::Accepted& accepted) {
    // Printed at once so a user can `wmctl cancel` or `wmctl attach` it from another shell.
    std::printf("%s\n", accepted.rollout_id().c_str());
    std::fflush(stdout);
    progress.OnAccepted(accepted);
  };
  callbacks.on_progress = [&](const v1::Progress& p) { progress.OnProgress(p); };
  callbacks.on_init = [&](const v1::StreamInit& init) {
    progress.OnInit(init);
    // An appended file already starts with the init segment.
    if (!out.appending()) append(init.init_segment());
    if (preview != nullptr) append_to(*preview, init.preview_init_segment());
  };
  callbacks.on_chunk = [&](const v1::VideoChunk& chunk) {
    if (chunk.kind() == v1::CHUNK_KIND_PREVIEW) {
      if (preview != nullptr) append_to(*preview, chunk.data());
      return;
    }
    append(chunk.data());
    progress.OnChunk(chunk);
  };

  const auto start = std::chrono::steady_clock::now();
  RolloutResult result;
  {
    SigintCanceller canceller(&ctx);
    result = run(callbacks, &ctx);
  }
  progress.Done();
  out.Finish();
  if (preview != nullptr) preview->Finish();

  if (!write_status.ok()) return Fail(kExitFailure, write_status.message());
  if (g_interrupted.load()) return Fail(kExitCancelled, "cancelled");
  if (!result.ok()) return Fail(kExitFailure, "rollout failed: " + FormatStatus(result.status));
  if (result.final.outcome() != v1::OUTCOME_SUCCEEDED) {
    return Fail(kExitFailure, absl::StrCat("rollout failed: ended with outcome ",
                                           v1::Outcome_Name(result.final.outcome())));
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "wrote %s: %u frames in %zu chunks, %llu bytes, %.1fs\n", out.path().c_str(),
               result.final.frames_sent(), result.chunks.size(),
               static_cast<unsigned long long>(out.bytes_written()), seconds);
  if (preview != nullptr) {
    std::fprintf(stderr, "wrote %s: %zu preview chunks, %llu bytes\n", preview->path().c_str(),
                 result.preview_chunks.size(),
                 static_cast<unsigned long long>(preview->bytes_written()));
  }
  return 0;
}

int RunRolloutCommand(const Globals& globals, const Flags& flags) {
  absl::StatusOr<RolloutArgs> args = ParseRolloutArgs(flags);
  if (!args.ok()) return Fail(kExitUsage, args.status().message());
  absl::StatusOr<v1::TrajectoryFile> trajectory = ReadTrajectoryFile(args->trajectory_path);
  if (!trajectory.ok()) return Fail(kExitFailure, trajectory.status().message());
  absl::StatusOr<v1::RolloutRequest> request = BuildRolloutRequest(
      args->model, args->image_path, *std::move(trajectory), args->seed, args->request_options);
  if (!request.ok()) return Fail(kExitFailure, request.status().message());
  request->set_priority(args->priority);
  request->set_tenant(args->tenant);
  request->set_reattach_grace_s(args->reattach_grace_s);

  OutputFile out(args->out_path);
  if (absl::Status status = out.Open(); !status.ok()) return Fail(kExitFailure, status.message());
  std::unique_ptr<OutputFile> preview;
  if (!args->preview_path.empty()) {
    preview = std::make_unique<OutputFile>(args->preview_path);
    if (absl::Status status = preview->Open(); !status.ok()) {
      return Fail(kExitFailure, status.message());
    }
  }
  std::unique_ptr<v1::RolloutService::Stub> stub = MakeStub(globals);
  return StreamToFile(out, preview.get(), request->num_frames(),
                      [&](const RolloutCallbacks& callbacks, grpc::ClientContext* ctx) {
                        return RunRollout(*stub, *request, callbacks, ctx);
                      });
}

int RunAttachCommand(const Globals& globals, const Flags& flags) {
  if (absl::Status s = ExpectPositional(flags, 1, "rollout id"); !s.ok()) {
    return Fail(kExitUsage, s.message());
  }
  const std::string id = flags.positional()[0];
  absl::StatusOr<std::string> out_path = flags.Required("out");
  if (!out_path.ok()) return Fail(kExitUsage, out_path.status().message());
  absl::StatusOr<uint32_t> from_chunk = flags.Number<uint32_t>("from-chunk", 0);
  if (!from_chunk.ok()) return Fail(kExitUsage, from_chunk.status().message());

  std::unique_ptr<v1::RolloutService::Stub> stub = MakeStub(globals);
  uint32_t frames_total = 0;
  {
    grpc::ClientContext ctx;
    SetUnaryDeadline(&ctx);
    v1::GetRolloutRequest req;
    req.set_rollout_id(id);
    v1::RolloutStatus status;
    grpc::Status s = stub->GetRollout(&ctx, req, &status);
    if (!s.ok()) return Fail(kExitFailure, "attach failed: " + FormatStatus(s));
    frames_total = status.frames_total();
  }
  OutputFile out(*out_path);
  if (absl::Status status = out.Open(/*append=*/*from_chunk > 0); !status.ok()) {
    return Fail(kExitFailure, status.message());
  }
  return StreamToFile(out, /*preview=*/nullptr, frames_total,
                      [&](const RolloutCallbacks& callbacks, grpc::ClientContext* ctx) {
                        return AttachRollout(*stub, id, *from_chunk, callbacks, ctx);
                      });
}

// "ROLLOUT_STATE_RUNNING" -> "RUNNING"; unknown numbers print as such.
template <typename Enum>
std::string ShortEnumName(const std::string& full_name, absl::string_view prefix, Enum value) {
  if (full_name.empty()) return absl::StrCat(static_cast<int>(value));
  return std::string(absl::StripPrefix(full_name, prefix));
}

std::string RolloutStateName(v1::RolloutState state) {
  return ShortEnumName(v1::RolloutState_Name(state), "ROLLOUT_STATE_", state);
}

std::string WorkerStateName(v1::WorkerState state) {
  return ShortEnumName(v1::WorkerState_Name(state), "WORKER_STATE_", state);
}

absl::StatusOr<std::string> SingleId(const Flags& flags, absl::string_view command) {
  absl::Status status = ExpectPositional(flags, 1, absl::StrCat(command, ": missing rollout ID"));
  if (!status.ok()) return status;
  if (flags.positional()[0].empty()) return absl::InvalidArgumentError("empty rollout ID");
  return flags.positional()[0];
}

int RunCancelCommand(const Globals& globals, const Flags& flags) {
  absl::StatusOr<std::string> id = SingleId(flags, "cancel");
  if (!id.ok()) return Fail(kExitUsage, id.status().message());
  v1::CancelRequest request;
  request.set_rollout_id(*id);
  v1::CancelResponse response;
  grpc::ClientContext ctx;
  SetUnaryDeadline(&ctx);
  grpc::Status status = MakeStub(globals)->Cancel(&ctx, request, &response);
  if (!status.ok()) return Fail(kExitFailure, "cancel failed: " + FormatStatus(status));
  std::printf("%s\n", RolloutStateName(response.state()).c_str());
  return 0;
}

void PrintRolloutStatus(const v1::RolloutStatus& s) {
  auto field = [](absl::string_view name, const std::string& value) {
    std::printf("%-16s%s\n", std::string(name).c_str(), value.c_str());
  };
  field("rollout_id", s.rollout_id());
  field("model", s.model());
  field("state", RolloutStateName(s.state()));
  field("queue_position", absl::StrCat(s.queue_position()));
  field("worker_id", s.worker_id().empty() ? "-" : s.worker_id());
  field("frames", absl::StrCat(s.frames_done(), "/", s.frames_total()));
  field("chunks_sent", absl::StrCat(s.chunks_sent()));
  field("queue_seconds", absl::StrFormat("%.3f", s.queue_seconds()));
  field("run_seconds", absl::StrFormat("%.3f", s.run_seconds()));
  if (s.error_code() != 0) {
    field("error", FormatStatus(grpc::Status(static_cast<grpc::StatusCode>(s.error_code()),
                                             s.error_message())));
  }
}

int RunStatusCommand(const Globals& globals, const Flags& flags) {
  absl::StatusOr<std::string> id = SingleId(flags, "status");
  if (!id.ok()) return Fail(kExitUsage, id.status().message());
  v1::GetRolloutRequest request;
  request.set_rollout_id(*id);
  v1::RolloutStatus response;
  grpc::ClientContext ctx;
  SetUnaryDeadline(&ctx);
  grpc::Status status = MakeStub(globals)->GetRollout(&ctx, request, &response);
  if (!status.ok()) return Fail(kExitFailure, "status failed: " + FormatStatus(status));
  PrintRolloutStatus(response);
  return 0;
}

int RunWorkersCommand(const Globals& globals, const Flags& flags) {
  if (absl::Status status = ExpectPositional(flags, 0, ""); !status.ok()) {
    return Fail(kExitUsage, status.message());
  }
  v1::ListWorkersResponse response;
  grpc::ClientContext ctx;
  SetUnaryDeadline(&ctx);
  grpc::Status status = MakeStub(globals)->ListWorkers(&ctx, v1::ListWorkersRequest(), &response);
  if (!status.ok()) return Fail(kExitFailure, "workers failed: " + FormatStatus(status));

  // Columns padded to the widest entry; no field contains spaces, so `awk` splitting works.
  std::vector<std::vector<std::string>> rows;
  for (const v1::WorkerInfo& w : response.workers()) {
    rows.push_back({w.worker_id(), w.device().empty() ? "-" : w.device(),
                    w.models().empty() ? "-" : absl::StrJoin(w.models(), ","),
                    WorkerStateName(w.state()),
                    absl::StrCat(w.running_rollouts(), "/", w.max_concurrent_rollouts())});
  }
  std::vector<size_t> widths(5, 0);
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) widths[c] = std::max(widths[c], row[c].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      absl::StrAppend(&line, row[c]);
      if (c + 1 < row.size()) line.append(widths[c] - row[c].size() + 2, ' ');
    }
    std::printf("%s\n", line.c_str());
  }
  return 0;
}

absl::StatusOr<PresetOptions> ParsePresetOptions(const Flags& flags) {
  PresetOptions options;
  absl::StatusOr<int> frames = flags.Number<int>("frames", 0);
  if (!frames.ok()) return frames.status();
  if (!flags.Has("frames")) return absl::InvalidArgumentError("--frames is required");
  options.frames = *frames;
  absl::StatusOr<double> fps = flags.Number<double>("fps", options.fps);
  if (!fps.ok()) return fps.status();
  options.fps = *fps;
  absl::StatusOr<double> hfov = flags.Number<double>("hfov", options.hfov_degrees);
  if (!hfov.ok()) return hfov.status();
  options.hfov_degrees = *hfov;
  for (const char* name : {"degrees", "meters"}) {
    if (!flags.Has(name)) continue;
    absl::StatusOr<double> value = flags.Number<double>(name, 0);
    if (!value.ok()) return value.status();
    (std::string(name) == "degrees" ? options.degrees : options.meters) = *value;
  }
  uint32_t width = 0;
  uint32_t height = 0;
  absl::Status status =
      ParseSize(flags, options.image_width, options.image_height, &width, &height);
  if (!status.ok()) return status;
  if (width > 1u << 16 || height > 1u << 16) {
    return absl::InvalidArgumentError("--width/--height: at most 65536");
  }
  options.image_width = static_cast<int>(width);
  options.image_height = static_cast<int>(height);
  return options;
}

int RunTrajectoryCommand(const Flags& flags) {
  if (absl::Status status =
          ExpectPositional(flags, 1, "trajectory: missing preset (yaw, pan, forward or orbit)");
      !status.ok()) {
    return Fail(kExitUsage, status.message());
  }
  absl::StatusOr<TrajectoryPreset> preset = ParseTrajectoryPreset(flags.positional()[0]);
  if (!preset.ok()) return Fail(kExitUsage, preset.status().message());
  absl::StatusOr<std::string> out_path = flags.Required("out");
  if (!out_path.ok()) return Fail(kExitUsage, out_path.status().message());
  absl::StatusOr<PresetOptions> options = ParsePresetOptions(flags);
  if (!options.ok()) return Fail(kExitUsage, options.status().message());
  absl::StatusOr<v1::TrajectoryFile> file = MakePresetTrajectory(*preset, *options);
  if (!file.ok()) return Fail(kExitUsage, "trajectory: " + std::string(file.status().message()));
  absl::Status status = WriteTrajectoryFile(*out_path, *file);
  if (!status.ok()) return Fail(kExitFailure, status.message());
  return 0;
}

struct Command {
  const char* name;
  std::set<std::string> flags;
  std::set<std::string> repeatable;
};

const Command kCommands[] = {
    {"rollout",
     {"model", "image", "trajectory", "out", "seed", "quality", "width", "height", "option",
      "request-id", "priority", "tenant", "reattach-grace", "preview-out"},
     {"option"}},
    {"attach", {"out", "from-chunk"}, {}},
    {"cancel", {}, {}},
    {"status", {}, {}},
    {"workers", {}, {}},
    {"trajectory", {"frames", "degrees", "meters", "fps", "width", "height", "hfov", "out"}, {}},
};

int Dispatch(const Globals& globals, const std::string& name,
             const std::vector<std::string>& args) {
  const Command* command = nullptr;
  for (const Command& c : kCommands) {
    if (name == c.name) command = &c;
  }
  if (command == nullptr) {
    return Fail(kExitUsage, absl::StrCat("unknown command \"", name, "\" (see wmctl --help)"));
  }
  absl::StatusOr<Flags> flags = Flags::Parse(args, command->flags, command->repeatable);
  if (!flags.ok()) return Fail(kExitUsage, absl::StrCat(name, ": ", flags.status().message()));
  if (flags->help()) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (name == "rollout") return RunRolloutCommand(globals, *flags);
  if (name == "attach") return RunAttachCommand(globals, *flags);
  if (name == "cancel") return RunCancelCommand(globals, *flags);
  if (name == "status") return RunStatusCommand(globals, *flags);
  if (name == "workers") return RunWorkersCommand(globals, *flags);
  return RunTrajectoryCommand(*flags);
}

int Main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  Globals globals;
  size_t i = 0;
  // Global flags come before the command.
  for (; i < args.size() && absl::StartsWith(args[i], "-"); ++i) {
    absl::string_view arg = args[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (arg == "--server") {
      if (i + 1 >= args.size()) return Fail(kExitUsage, "--server needs a value");
      globals.server = args[++i];
    } else if (absl::ConsumePrefix(&arg, "--server=")) {
      globals.server = std::string(arg);
    } else {
      return Fail(kExitUsage, absl::StrCat("unknown flag ", arg, " (see wmctl --help)"));
    }
    if (globals.server.empty()) return Fail(kExitUsage, "--server: empty address");
  }
  if (i >= args.size()) return Fail(kExitUsage, "no command given (see wmctl --help)");
  const std::string command = args[i];
  if (command == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  return Dispatch(globals, command, std::vector<std::string>(args.begin() + i + 1, args.end()));
}

}  // namespace
}  // namespace wmserve::client

int main(int argc, char** argv) { return wmserve::client::Main(argc, argv); }
