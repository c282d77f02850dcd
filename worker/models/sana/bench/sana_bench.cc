// File: sana_bench — timings of the SANA-WM port's pieces at a preset's true shapes.
//
// LibTorch + the standard library only (builds in the model-only build, -DWMSERVE_MODEL_ONLY=ON).
//
//   sana_bench [--device cpu|cuda:N] [--dtype fp32|bf16|fp16] [--preset tiny|sana-wm-2.6b]
//              [--config FILE] [--what all|GROUP|NAME[,...]] [--iters N] [--warmup N]
//              [--threads N] [--latent-frames T] [--gdn-method chunked|recurrent] [--list]
//
// Benchmarks are rows of a table (BenchmarkTable below): a name, a group (--what gdn selects
// every "gdn" row) and a prepare function that builds the inputs once, on the device, and
// returns the call to time. The full-model rows ("model.*") use dummy random weights: a steady
// streaming chunk (4 denoising + 1 KV-save forward), a bidirectional CFG step at T=21, and the
// streaming memory after chunk 2 vs chunk 10.
//
// Each row: `warmup` untimed calls, then `iters` timed calls, each bracketed by a device
// synchronisation (host wall clock; on CUDA this includes the launch overhead of the call).
// Reported: median / min / max ms per call, and peak memory over the timed calls:
//   * CUDA: the caching allocator's peak allocated bytes (reset after warm-up), and that peak
//     minus what was allocated before the timed calls (the call's own transient memory);
//   * CPU: the process's peak RSS (VmHWM, reset through /proc/self/clear_refs after warm-up),
//     and that peak minus the RSS before the timed calls.
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/zeros.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>
#include <torch/cuda.h>
#include <torch/version.h>

#if WMSERVE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "worker/models/bench_support.h"
#include "worker/models/sana/camera.h"
#include "worker/models/sana/gdn.h"
#include <ATen/ops/isfinite.h>

#include "worker/models/sana/dummy_weights.h"
#include "worker/models/sana/rollout.h"
#include "worker/models/sana/sampler.h"
#include "worker/models/sana/sana_config.h"
#include "worker/models/sana/transformer.h"

namespace wmserve::worker::sana {
namespace {

using bench::DeviceDescription;
using bench::Median;
using bench::ParseDtype;
using bench::ParseInt;
using bench::ResetPeakMemory;
using bench::Sync;

// --- options -------------------------------------------------------------------------------

struct Options {
  std::string device = "cpu";
  std::string dtype = "fp32";
  std::string preset = "tiny";
  std::string config_file;  // overrides --preset
  std::string what = "all";
  int iters = 0;  // 0: 20 on CUDA or for tiny, 10 otherwise
  int warmup = 2;
  int threads = 0;          // 0: LibTorch's default
  int latent_frames = 121;  // camera.prepare: the rollout length (121 = 961 pixel frames, 60 s)
  std::string gdn_method = "chunked";
  bool list = false;
};

const char kUsage[] =
    "usage: sana_bench [--device cpu|cuda:N] [--dtype fp32|bf16|fp16]\n"
    "                  [--preset tiny|sana-wm-2.6b] [--config FILE]\n"
    "                  [--what all|GROUP|NAME[,...]] [--iters N] [--warmup N] [--threads N]\n"
    "                  [--latent-frames T] [--gdn-method chunked|recurrent] [--list]\n";

Options ParseOptions(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string value;
    const size_t eq = arg.find('=');
    const bool has_inline = arg.rfind("--", 0) == 0 && eq != std::string::npos;
    if (has_inline) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    }
    auto next = [&]() -> std::string {
      if (has_inline) return value;
      if (i + 1 >= argc) throw std::invalid_argument(arg + ": missing value");
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      std::exit(0);
    } else if (arg == "--list") {
      o.list = true;
    } else if (arg == "--device") {
      o.device = next();
    } else if (arg == "--dtype") {
      o.dtype = next();
    } else if (arg == "--preset") {
      o.preset = next();
    } else if (arg == "--config") {
      o.config_file = next();
    } else if (arg == "--what") {
      o.what = next();
    } else if (arg == "--iters") {
      o.iters = ParseInt(arg, next(), 1);
    } else if (arg == "--warmup") {
      o.warmup = ParseInt(arg, next(), 0);
    } else if (arg == "--threads") {
      o.threads = ParseInt(arg, next(), 1);
    } else if (arg == "--latent-frames") {
      o.latent_frames = ParseInt(arg, next(), 1);
    } else if (arg == "--gdn-method") {
      o.gdn_method = next();
    } else {
      throw std::invalid_argument("unknown argument '" + arg + "'");
    }
  }
  return o;
}

// --- device helpers ------------------------------------------------------------------------

struct Context {
  Options options;
  SanaConfig config;
  c10::Device device = c10::Device(c10::kCPU);
  c10::ScalarType dtype = c10::ScalarType::Float;
  GdnScanOptions gdn;

  at::TensorOptions Float() const { return at::TensorOptions().device(device).dtype(at::kFloat); }
};

struct MemorySample {
  int64_t baseline = 0;  // before the timed calls
  int64_t peak = 0;      // peak over the timed calls
  const char* kind = "";
};

MemorySample ReadPeakMemory(const c10::Device& device, int64_t baseline) {
  return {baseline, bench::PeakMemory(device), bench::MemoryKind(device)};
}

// --- the benchmark table -------------------------------------------------------------------

// A prepared benchmark: inputs live in the closure.
struct Case {
  std::string shape;              // human-readable shape of one call
  std::string where;              // "device" or "host"
  std::function<void()> call;     // the work to time
  int64_t calls_per_forward = 0;  // > 0: print median * this as the cost per model forward
  // > 0: latent frames one call produces; the row then also prints the aggregate throughput.
  int64_t latent_frames_per_call = 0;
};

struct Benchmark {
  std::string name;
  std::string group;
  std::string description;
  std::function<Case(const Context&)> prepare;
};

std::string GdnShape(const Context& ctx, int64_t frames) {
  const SanaConfig& c = ctx.config;
  std::ostringstream s;
  s << "B1 H" << c.num_heads() << " D" << c.head_dim() << " S" << c.tokens_per_frame() << " T"
    << frames << " (N " << frames * c.tokens_per_frame() << ")";
  return s.str();
}

int64_t GdnBlocks(const SanaConfig& c) {
  return c.depth() - static_cast<int64_t>(c.SoftmaxBlocks().size());
}

// Random main-branch scan inputs of one streaming chunk in the layout of gdn.h: q/k ReLU'd,
// k and k_rot scaled by 1/sqrt(D*S), in the benchmark dtype; gates in float32 (as
// ComputeFrameGates returns them): beta in (0, 1) per token, decay in (0.5, 1) per frame.
GdnScanInputs MakeGdnInputs(const Context& ctx, int64_t frames) {
  const SanaConfig& c = ctx.config;
  const int64_t h = c.num_heads(), d = c.head_dim(), s = c.tokens_per_frame();
  const int64_t n = frames * s;
  const double key_scale = GdnKeyScale(d, s);
  const auto f = ctx.Float();
  auto cast = [&](const at::Tensor& t) { return t.to(ctx.dtype); };
  GdnScanInputs in;
  in.q = cast(at::relu(at::randn({1, h, d, n}, f)));
  in.k = cast(at::relu(at::randn({1, h, d, n}, f)).mul(key_scale));
  in.v = cast(at::randn({1, h, d, n}, f));
  in.q_rot = cast(at::randn({1, h, d, n}, f));
  in.k_rot = cast(at::randn({1, h, d, n}, f).mul(key_scale));
  in.beta = at::sigmoid(at::randn({1, h, frames, s}, f));
  in.decay = at::rand({1, h, frames}, f).mul(0.5).add(0.5);
  return in;
}

CamScanInputs ToCam(const GdnScanInputs& in) {
  CamScanInputs cam;
  cam.q_rot = in.q_rot;
  cam.k_rot = in.k_rot;
  cam.v = in.v;
  cam.beta = in.beta;
  cam.decay = in.decay;
  return cam;
}

Case PrepareGdnFirstChunk(const Context& ctx) {
  const int64_t frames = 1 + ctx.config.chunk_size;
  auto in = std::make_shared<GdnScanInputs>(MakeGdnInputs(ctx, frames));
  GdnScanOptions opts = ctx.gdn;
  return {GdnShape(ctx, frames) + ", zero state", "device",
          [in, opts] { (void)GdnStreamChunk(*in, GdnState{}, opts); }, GdnBlocks(ctx.config)};
}

Case PrepareGdnSteadyChunk(const Context& ctx) {
  const int64_t frames = ctx.config.chunk_size;
  const GdnScanOptions opts = ctx.gdn;
  // The carried state of a real rollout: the forward state after a first chunk.
  const GdnState carried = GdnStreamChunk(MakeGdnInputs(ctx, 1 + frames), GdnState{}, opts).state;
  auto in = std::make_shared<GdnScanInputs>(MakeGdnInputs(ctx, frames));
  return {GdnShape(ctx, frames) + ", carried state", "device",
          [in, carried, opts] { (void)GdnStreamChunk(*in, carried, opts); }, GdnBlocks(ctx.config)};
}

Case PrepareCamSteadyChunk(const Context& ctx) {
  const int64_t frames = ctx.config.chunk_size;
  const GdnScanOptions opts = ctx.gdn;
  const at::Tensor carried =
      CamStreamChunk(ToCam(MakeGdnInputs(ctx, 1 + frames)), at::Tensor(), opts).state;
  auto in = std::make_shared<CamScanInputs>(ToCam(MakeGdnInputs(ctx, frames)));
  return {GdnShape(ctx, frames) + ", carried state", "device",
          [in, carried, opts] { (void)CamStreamChunk(*in, carried, opts); }, GdnBlocks(ctx.config)};
}

std::string Fixed(double v, int digits);
double MiB(int64_t bytes);

// --- full-model rows ---------------------------------------------------------------------------

// One model per process with dummy weights: every parameter of ExpectedParameters drawn as
// small random values (0.02 N(0,1); norm weights 1 + 0.02 N; GDN gates at their training init:
// beta bias 5, dt_bias -5, A_log 0, output gate bias 1.278), on the benchmark device and dtype.
// The serving path's `--weights dummy` model: seeded random weights with the training-init gates
// (dummy_weights.h), so the numbers are those of what a worker would run.
const SanaTransformer& BenchModel(const Context& ctx) {
  static std::unique_ptr<SanaTransformer> model;
  if (!model) model = InitDummyWeights(ctx.config, /*seed=*/1, ctx.dtype, ctx.device);
  return *model;
}

// Rollout inputs for `latent` frames at the preset's latent grid on the benchmark device:
// the smooth trajectory below through PrepareCamera, random text (all tokens kept).
RolloutInputs BenchRolloutInputs(const Context& ctx, int64_t latent);

std::string ModelShape(const Context& ctx, int64_t batch, int64_t frames) {
  const SanaConfig& c = ctx.config;
  std::ostringstream s;
  s << "B" << batch << " T" << frames << " x " << c.tokens_per_frame() << " tok (N "
    << frames * c.tokens_per_frame() << ")";
  return s.str();
}

// One steady-state streaming chunk (chunk 2: 3 latent frames, cache holding chunks 0 and 1 =
// the full 10-frame softmax window): 4 read-only denoising forwards + Euler steps, then the
// KV-save forward at t = 0 (committed to a copy of the warm cache, so every call is the same).
Case PrepareStreamChunk(const Context& ctx) {
  const SanaTransformer& model = BenchModel(ctx);
  const int64_t frames = 1 + 3 * ctx.config.chunk_size;
  const RolloutInputs in = BenchRolloutInputs(ctx, frames);
  const std::vector<FrameRange> plan = StreamingChunkPlan(frames, ctx.config.chunk_size);
  const SanaForwardOptions options = StreamingForwardOptions();
  auto warm = std::make_shared<SanaStreamingCache>();
  const at::Tensor noise = RolloutInitialNoise(in.first_latent, frames, 1, ctx.device);
  auto slice = [](const at::Tensor& t, int64_t dim, FrameRange r) {
    return t.narrow(dim, r.begin, r.size());
  };
  for (int i = 0; i < 2; ++i) {
    const FrameRange r = plan[i];
    model.ForwardChunk(slice(noise, 2, r), FrameTimesteps(1, r, 0.0, {0}, ctx.device), in.text,
                       in.text_mask, slice(in.camera_conditions, 1, r),
                       slice(in.chunk_plucker, 2, r), r.begin, *warm, true, options);
  }
  const FrameRange r = plan[2];
  const at::Tensor x0 = slice(noise, 2, r).clone();
  const at::Tensor cam = slice(in.camera_conditions, 1, r);
  const at::Tensor plucker = slice(in.chunk_plucker, 2, r);
  const at::Tensor text = in.text, mask = in.text_mask;
  const SigmaSchedule schedule = StreamingSchedule();
  const c10::Device device = ctx.device;
  return {ModelShape(ctx, 1, r.size()) + ", 4+1 passes", "device",
          [&model, warm, x0, cam, plucker, text, mask, schedule, r, options, device] {
            SanaStreamingCache cache = *warm;
            at::Tensor x = x0;
            for (int step = 0; step < 4; ++step) {
              const at::Tensor ts = FrameTimesteps(1, r, schedule.timesteps[step], {0}, device);
              const at::Tensor v = model.ForwardChunk(x, ts, text, mask, cam, plucker, r.begin,
                                                      cache, false, options);
              x = PerFrameEulerStep(x, v, ts, schedule);
            }
            model.ForwardChunk(x, FrameTimesteps(1, r, 0.0, {0}, device), text, mask, cam,
                               plucker, r.begin, cache, true, options);
          },
          0};
}

// Co-batching: `batch` rollouts in the steady state (past chunk 1, so every chunk has the same
// shape), each call = the next chunk of all of them in one StreamingRollout::NextChunkBatch (one
// batched forward per step). Rollouts differ in seed and prompt, as real batch-mates would.
// Each rollout is long enough that no call runs out of chunks.
Case PrepareCoBatch(const Context& ctx, int batch) {
  const SanaTransformer& model = BenchModel(ctx);
  const int chunks = 2 + ctx.options.warmup + (ctx.options.iters > 0 ? ctx.options.iters : 20) + 2;
  const int64_t frames = 1 + static_cast<int64_t>(ctx.config.chunk_size) * chunks;
  auto rollouts = std::make_shared<std::vector<std::unique_ptr<StreamingRollout>>>();
  for (int i = 0; i < batch; ++i) {
    RolloutInputs in = BenchRolloutInputs(ctx, frames);
    in.seed = 1 + static_cast<uint64_t>(i);
    rollouts->push_back(std::make_unique<StreamingRollout>(model, std::move(in)));
    for (int c = 0; c < 2; ++c) (*rollouts)[i]->NextChunk(nullptr);
  }
  std::vector<StreamingRollout*> members;
  for (auto& r : *rollouts) members.push_back(r.get());
  const std::vector<StepCallback> callbacks(members.size(), nullptr);
  std::ostringstream shape;
  shape << "B" << batch << " rollouts x 1 steady chunk, 4+1 passes";
  Case c{shape.str(), "device",
         [rollouts, members, callbacks] {
           (void)StreamingRollout::NextChunkBatch(members, callbacks);
         },
         0};
  c.latent_frames_per_call = static_cast<int64_t>(batch) * ctx.config.chunk_size;
  return c;
}

// One bidirectional denoiser step at T = 21 latent frames (10 s) with the CFG batch of 2
// ([uncond, cond], camera duplicated) and the CFG combine + Euler step.
Case PrepareBidirStep(const Context& ctx) {
  const SanaTransformer& model = BenchModel(ctx);
  constexpr int64_t kFrames = 21;
  const RolloutInputs in = BenchRolloutInputs(ctx, kFrames);
  const at::Tensor x = RolloutInitialNoise(in.first_latent, kFrames, 1, ctx.device);
  const SigmaSchedule schedule = BidirectionalSchedule();
  const at::Tensor ts = FrameTimesteps(1, {0, kFrames}, schedule.timesteps[0], {0}, ctx.device);
  const at::Tensor x2 = at::cat({x, x}, 0), ts2 = ts.repeat({2, 1, 1});
  const at::Tensor text2 = at::cat({in.text.mul(0.0), in.text}, 0);
  const at::Tensor mask2 = at::cat({in.text_mask, in.text_mask}, 0);
  const at::Tensor cam2 = in.camera_conditions.repeat({2, 1, 1});
  const at::Tensor plucker2 = in.chunk_plucker.repeat({2, 1, 1, 1, 1});
  return {ModelShape(ctx, 2, kFrames) + ", CFG", "device",
          [&model, x, x2, ts, ts2, text2, mask2, cam2, plucker2, schedule] {
            const at::Tensor out = model.Forward(x2, ts2, text2, mask2, cam2, plucker2);
            (void)PerFrameEulerStep(x, CfgCombineBatched(out, kBidirectionalCfgScale), ts,
                                    schedule);
          },
          0};
}

// Memory of a 60 s streaming rollout (121 latent frames = 40 chunks): the peak (CUDA allocator /
// process RSS) while the chunk that ends the first 10 s (chunk 6, latent frames up to 22) and
// the last chunk (chunk 39) are produced, and cache_bytes after each. Streaming state must not
// grow with rollout length. The timed call is empty (the numbers are printed in full).
Case PrepareStreamMemory(const Context& ctx) {
  const SanaTransformer& model = BenchModel(ctx);
  constexpr int kTenSecondsChunk = 6;
  const int64_t frames = 121;  // 961 pixel frames = 60 s at 16 fps
  StreamingRollout rollout(model, BenchRolloutInputs(ctx, frames));
  const int last = rollout.num_chunks() - 1;
  int64_t peak_a = 0, peak_b = 0, base_a = 0, base_b = 0, bytes_a = 0, bytes_b = 0;
  for (int i = 0; i < rollout.num_chunks(); ++i) {
    Sync(ctx.device);
    const int64_t base = ResetPeakMemory(ctx.device);
    const at::Tensor latents = rollout.NextChunk(nullptr);
    Sync(ctx.device);
    const MemorySample m = ReadPeakMemory(ctx.device, base);
    if (i == last) {
      // Dummy weights keep the recurrence finite over the whole minute (training-init gates).
      const at::Tensor l = latents.to(at::kFloat);
      std::cout << "model.stream_memory: last chunk latents finite: "
                << (at::isfinite(l).all().item<bool>() ? "yes" : "NO") << ", max |x| "
                << l.abs().max().item<double>() << "\n";
    }
    if (i == kTenSecondsChunk) peak_a = m.peak, base_a = base, bytes_a = rollout.cache_bytes();
    if (i == last) peak_b = m.peak, base_b = base, bytes_b = rollout.cache_bytes();
  }
  std::cout << "model.stream_memory: 60 s rollout, " << rollout.num_chunks()
            << " chunks; peak during chunk " << kTenSecondsChunk << " (10 s) "
            << Fixed(MiB(peak_a), 1) << " MiB (before " << Fixed(MiB(base_a), 1)
            << "), during chunk " << last << " (60 s) " << Fixed(MiB(peak_b), 1)
            << " MiB (before " << Fixed(MiB(base_b), 1) << "); cache_bytes " << bytes_a << " vs "
            << bytes_b << (bytes_a == bytes_b ? " (equal)" : " (DIFFERENT)") << "\n";
  std::ostringstream shape;
  shape << "peak 10s " << Fixed(MiB(peak_a), 0) << " / 60s " << Fixed(MiB(peak_b), 0)
        << " MiB, cache " << Fixed(MiB(bytes_a), 1) << "/" << Fixed(MiB(bytes_b), 1);
  return {shape.str(), "device", [] {}, 0};
}

// A smooth metric trajectory: +1 degree yaw and 0.1 m forward per pixel frame (the golden
// set's trajectory A), constant intrinsics at the model resolution.
std::pair<at::Tensor, at::Tensor> MakeTrajectory(const CameraGeometry& g, int64_t pixel_frames) {
  const double kPi = 3.14159265358979323846;
  at::Tensor c2w = at::zeros({pixel_frames, 4, 4}, at::kDouble);
  auto a = c2w.accessor<double, 3>();
  double x = 0, z = 0;
  for (int64_t i = 0; i < pixel_frames; ++i) {
    const double yaw = static_cast<double>(i) * kPi / 180.0;
    const double cy = std::cos(yaw), sy = std::sin(yaw);
    // R = R_y(yaw): columns are the camera axes in world coordinates.
    a[i][0][0] = cy, a[i][0][2] = sy;
    a[i][1][1] = 1;
    a[i][2][0] = -sy, a[i][2][2] = cy;
    if (i > 0) {
      x += 0.1 * sy;
      z += 0.1 * cy;
    }
    a[i][0][3] = x, a[i][2][3] = z;
    a[i][3][3] = 1;
  }
  at::Tensor intr = at::empty({pixel_frames, 4}, at::kDouble);
  intr.select(1, 0).fill_(0.8 * g.pixel_width);
  intr.select(1, 1).fill_(0.8 * g.pixel_width);
  intr.select(1, 2).fill_(0.5 * g.pixel_width);
  intr.select(1, 3).fill_(0.5 * g.pixel_height);
  return {c2w, intr};
}

Case PrepareCameraPrepare(const Context& ctx) {
  const CameraGeometry g = CameraGeometry::FromConfig(ctx.config);
  const int64_t latent = ctx.options.latent_frames;
  const int64_t pixel = g.temporal_stride * (latent - 1) + 1;
  auto traj = std::make_shared<std::pair<at::Tensor, at::Tensor>>(MakeTrajectory(g, pixel));
  std::ostringstream shape;
  shape << "F" << pixel << " px -> T" << latent << " x " << g.latent_height() << "x"
        << g.latent_width() << ", plucker " << 6 * g.temporal_stride << " ch";
  return {shape.str(), "host", [traj, g] { (void)PrepareCamera(traj->first, traj->second, g); }, 0};
}

Case PrepareRayMats(const Context& ctx) {
  const CameraGeometry g = CameraGeometry::FromConfig(ctx.config);
  const int64_t frames = 1 + ctx.config.chunk_size;
  const auto traj = MakeTrajectory(g, g.temporal_stride * (frames - 1) + 1);
  const CameraTensors cam = PrepareCamera(traj.first, traj.second, g);
  const at::Tensor cond = cam.camera_conditions.unsqueeze(0).to(ctx.device);  // (1, T, 20)
  const int64_t h = g.latent_height(), w = g.latent_width();
  std::ostringstream shape;
  shape << "B1 T" << frames << " x " << h << "x" << w << " -> (1," << frames << "," << h << "," << w
        << ",4,4) f64";
  return {shape.str(), "device", [cond, h, w] { (void)ComputeRayMats(cond, h, w); }, 1};
}

RolloutInputs BenchRolloutInputs(const Context& ctx, int64_t latent) {
  const SanaConfig& c = ctx.config;
  const CameraGeometry g = CameraGeometry::FromConfig(c);
  const auto traj = MakeTrajectory(g, g.temporal_stride * (latent - 1) + 1);
  const CameraTensors cam = PrepareCamera(traj.first, traj.second, g);
  RolloutInputs in;
  in.first_latent = at::randn({1, c.in_channels, 1, g.latent_height(), g.latent_width()},
                              ctx.Float());
  in.camera_conditions = cam.camera_conditions.unsqueeze(0).to(ctx.device);
  in.chunk_plucker = cam.chunk_plucker.unsqueeze(0).to(ctx.device);
  in.text = at::randn({1, 1, c.model_max_length, c.caption_channels}, ctx.Float());
  in.text_mask = at::ones({1, c.model_max_length},
                          at::TensorOptions().dtype(at::kLong).device(ctx.device));
  in.seed = 1;
  return in;
}

const std::vector<Benchmark>& BenchmarkTable() {
  static const std::vector<Benchmark> table = {
      {"gdn.stream.first", "gdn",
       "GdnStreamChunk, main branch: the first streaming chunk (1 + chunk_size frames), zero "
       "state",
       PrepareGdnFirstChunk},
      {"gdn.stream.steady", "gdn",
       "GdnStreamChunk, main branch: a later chunk (chunk_size frames) from a carried state",
       PrepareGdnSteadyChunk},
      {"gdn.cam.steady", "gdn", "CamStreamChunk, camera branch: a later chunk from a carried state",
       PrepareCamSteadyChunk},
      {"camera.prepare", "camera",
       "PrepareCamera on the host for a whole rollout of --latent-frames latent frames "
       "(relative poses, raymap, chunk Plücker)",
       PrepareCameraPrepare},
      {"camera.raymats", "camera",
       "ComputeRayMats: per-token UCPE ray matrices of a first chunk, once per forward",
       PrepareRayMats},
      {"model.stream_chunk", "model",
       "one steady streaming chunk (3 latent frames, warm 10-frame window): 4 read-only "
       "denoising forwards + Euler, then the KV-save forward (dummy random weights)",
       PrepareStreamChunk},
      {"model.bidir_step", "model",
       "one bidirectional denoiser step at T=21 (10 s): forward with the CFG batch of 2, CFG "
       "combine, Euler",
       PrepareBidirStep},
      {"model.cobatch.1", "cobatch",
       "co-batching baseline: one rollout's steady chunk through NextChunkBatch (B=1)",
       [](const Context& ctx) { return PrepareCoBatch(ctx, 1); }},
      {"model.cobatch.2", "cobatch",
       "2 rollouts' steady chunks in one batched forward per step (NextChunkBatch)",
       [](const Context& ctx) { return PrepareCoBatch(ctx, 2); }},
      {"model.cobatch.4", "cobatch",
       "4 rollouts' steady chunks in one batched forward per step (NextChunkBatch)",
       [](const Context& ctx) { return PrepareCoBatch(ctx, 4); }},
      {"model.stream_memory", "model",
       "60 s streaming rollout (40 chunks): peak memory while producing chunk 6 (10 s) vs 39 and "
       "cache_bytes (no timed work)",
       PrepareStreamMemory},
  };
  return table;
}

bool Selected(const Benchmark& b, const std::string& what) {
  std::istringstream s(what);
  std::string item;
  while (std::getline(s, item, ',')) {
    if (item == "all" || item == b.group || item == b.name) return true;
  }
  return false;
}

// --- measurement ---------------------------------------------------------------------------

struct Result {
  std::vector<double> ms;
  MemorySample memory;
};

// Host rows ("host" work such as PrepareCamera) report the process RSS even on CUDA runs.
Result Measure(const Context& ctx, const Case& c, int iters, int warmup) {
  const c10::Device memory_device = c.where == "host" ? c10::Device(c10::kCPU) : ctx.device;
  for (int i = 0; i < warmup; ++i) {
    c.call();
    Sync(ctx.device);
  }
  Result r;
  const int64_t baseline = ResetPeakMemory(memory_device);
  for (int i = 0; i < iters; ++i) {
    Sync(ctx.device);
    const auto t0 = std::chrono::steady_clock::now();
    c.call();
    Sync(ctx.device);
    const auto t1 = std::chrono::steady_clock::now();
    r.ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  r.memory = ReadPeakMemory(memory_device, baseline);
  return r;
}

std::string Fixed(double v, int digits) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(digits) << v;
  return s.str();
}

double MiB(int64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

int Run(const Options& o) {
  if (o.list) {
    for (const Benchmark& b : BenchmarkTable()) {
      std::cout << std::left << std::setw(20) << b.name << std::setw(8) << b.group << b.description
                << "\n";
    }
    return 0;
  }
  Context ctx;
  ctx.options = o;
  ctx.config =
      o.config_file.empty() ? SanaConfig::Preset(o.preset) : SanaConfig::FromFile(o.config_file);
  ctx.dtype = ParseDtype(o.dtype);
  ctx.device = bench::ResolveDevice(o.device);
  if (o.gdn_method == "chunked") {
    ctx.gdn.method = GdnScanMethod::kChunked;
  } else if (o.gdn_method == "recurrent") {
    ctx.gdn.method = GdnScanMethod::kRecurrent;
  } else {
    throw std::invalid_argument("--gdn-method: expected chunked or recurrent, got '" +
                                o.gdn_method + "'");
  }
  if (o.threads > 0) at::set_num_threads(o.threads);
  const int iters =
      o.iters > 0 ? o.iters : (ctx.device.is_cuda() || ctx.config.name == "tiny" ? 20 : 10);

  std::vector<const Benchmark*> rows;
  for (const Benchmark& b : BenchmarkTable()) {
    if (Selected(b, o.what)) rows.push_back(&b);
  }
  if (rows.empty()) {
    throw std::invalid_argument("--what '" + o.what +
                                "' matches no benchmark (see --list; groups: gdn, camera, model, cobatch)");
  }

  c10::InferenceMode inference;
  at::manual_seed(20260515);
  const SanaConfig& c = ctx.config;
  std::cout << "sana_bench: torch " << TORCH_VERSION << ", device " << DeviceDescription(ctx.device)
            << ", dtype " << o.dtype << ", cpu threads " << at::get_num_threads() << "\n"
            << "preset " << c.name << ": " << c.depth() << " blocks (" << GdnBlocks(c) << " GDN), "
            << c.num_heads() << " heads x " << c.head_dim() << ", " << c.latent_height() << "x"
            << c.latent_width() << " = " << c.tokens_per_frame() << " tokens/frame, chunks "
            << 1 + c.chunk_size << "+" << c.chunk_size << "+..., gdn method " << o.gdn_method
            << "; " << iters << " timed calls after " << o.warmup << " warm-up\n\n";
  std::cout << std::left << std::setw(21) << "benchmark" << std::setw(44) << "shape" << std::right
            << std::setw(11) << "median ms" << std::setw(10) << "min ms" << std::setw(10)
            << "max ms" << std::setw(11) << "x/fwd ms" << std::setw(12) << "peak MiB"
            << std::setw(12) << "+MiB call"
            << "  memory\n";
  for (const Benchmark* b : rows) {
    const Case cs = b->prepare(ctx);
    Sync(ctx.device);
    const Result r = Measure(ctx, cs, iters, o.warmup);
    const double med = Median(r.ms);
    const auto [mn, mx] = std::minmax_element(r.ms.begin(), r.ms.end());
    std::cout << std::left << std::setw(21) << b->name << std::setw(44) << cs.shape << std::right
              << std::setw(11) << Fixed(med, 3) << std::setw(10) << Fixed(*mn, 3) << std::setw(10)
              << Fixed(*mx, 3) << std::setw(11)
              << (cs.calls_per_forward > 0
                      ? Fixed(med * static_cast<double>(cs.calls_per_forward), 2)
                      : std::string("-"))
              << std::setw(12) << Fixed(MiB(r.memory.peak), 1) << std::setw(12)
              << Fixed(MiB(std::max<int64_t>(r.memory.peak - r.memory.baseline, 0)), 1) << "  "
              << r.memory.kind << (cs.where == "host" ? " (host work)" : "") << "\n";
    if (cs.latent_frames_per_call > 0) {
      const double fps = static_cast<double>(cs.latent_frames_per_call) / (med / 1000.0);
      std::cout << "  " << b->name << ": " << Fixed(fps, 2) << " latent frames/s aggregate = "
                << Fixed(fps * 8.0 / 16.0, 3) << "x realtime (8 pixel frames per latent frame at "
                << "16 fps)\n";
    }
  }
  std::cout << "\nx/fwd: median x calls per model forward (GDN rows: x " << GdnBlocks(c)
            << " GDN blocks; raymats: once per forward). +MiB call: peak minus usage before the"
            << " timed calls (rss: pages the allocator already holds are not counted again).\n";
  return 0;
}

}  // namespace
}  // namespace wmserve::worker::sana

int main(int argc, char** argv) {
  try {
    return wmserve::worker::sana::Run(wmserve::worker::sana::ParseOptions(argc, argv));
  } catch (const std::invalid_argument& e) {
    std::cerr << "sana_bench: " << e.what() << "\n" << wmserve::worker::sana::kUsage;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "sana_bench: " << e.what() << "\n";
    return 1;
  }
}
