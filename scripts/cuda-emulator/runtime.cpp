// The CUDA emulator's runtime, built as a stand-in libcuda.so.1 (scripts/cuda-emulator/README.md). It implements
// the part of the CUDA driver API that cudarc calls for glmv's CUDA backend, with host memory as device memory and
// glmv's kernels compiled for the host (one shared object per kernel image, built by build.sh), and runs each launch
// the way a GPU defines it:
// - blocks in any order, in parallel on worker threads; within a block every thread is a fiber on one worker, run
//   until it reaches __syncthreads, a warp collective or its end (alternately front to back and back to front, so
//   that a missing barrier shows as a wrong result rather than hiding behind one fixed order);
// - __syncthreads releases when every live thread of the block waits on it; warp collectives (shuffles, match,
//   mma.sync) wait for every lane of their mask; a block where nothing can go on (lanes of a warp at different
//   collectives, a collective waiting on a lane that exited) fails the launch with what each thread waits on;
// - every allocation ends at a page boundary followed by an inaccessible page, so an access past its end (and a
//   fiber's stack overflow) fails the launch with the kernel, block and thread instead of corrupting memory;
// - an access not aligned to its size (a GPU faults on it; x86-64 does not) fails the launch: build.sh compiles the
//   kernels with GCC's -fsanitize=alignment, whose checks call the handler here, with the source line.
// A failed launch returns CUDA_ERROR_LAUNCH_FAILED, CUDA_ERROR_ILLEGAL_ADDRESS or CUDA_ERROR_MISALIGNED_ADDRESS from
// cuLaunchKernel and prints why.
#include <cuda.h>
#include <dirent.h>
#include <dlfcn.h>
#include <link.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "emulator.h"

#if !defined(__x86_64__)
#error "the CUDA emulator's fiber switch (glmv_emu_switch) is written for x86-64"
#endif

// ---------------------------------------------------------------------------------------------------------------
// Fibers: glmv_emu_switch saves the callee-saved registers on the current stack, stores the stack pointer in *save
// and continues on `load` (x86-64 System V). The FP control words are not switched: kernels never change them.
extern "C" void glmv_emu_switch(void** save, void* load);
asm(R"(
.text
.globl glmv_emu_switch
.hidden glmv_emu_switch
.type glmv_emu_switch,@function
glmv_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size glmv_emu_switch, .-glmv_emu_switch
)");

namespace {

constexpr size_t PAGE = 4096;
constexpr size_t STACK_BYTES = 256 * 1024;

struct Module {
  void* handle;
  const GlmvEmuKernel* kernels;
  const GlmvEmuKernel* kernels_end;  // the table's null entry
  // The module's thread_locals are its kernels' __shared__ arrays (device.h): touch_shared makes the calling thread's
  // copy exist, shared_bytes is their size (the module's PT_TLS segment).
  void (*touch_shared)();
  size_t shared_bytes;
};

struct Launch {
  const GlmvEmuKernel* kernel;
  const Module* module;
  void* bound;
  dim3 grid, block;
  uint64_t blocks;
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  // Why the launch failed when a fault (not a deadlock) stopped it: CUDA_ERROR_ILLEGAL_ADDRESS or MISALIGNED_ADDRESS.
  std::atomic<CUresult> fault{CUDA_SUCCESS};
};

enum class State { RUNNABLE, AT_BARRIER, AT_WARP, DONE };

struct Fiber {
  void* sp = nullptr;
  char* stack = nullptr;  // STACK_BYTES above one inaccessible page
  GlmvEmuLane lane{};
  int warp = 0, lane_id = 0;
  State state = State::DONE;
};

struct Warp {
  unsigned present = 0;  // lanes this block has
  unsigned arrived = 0;
  unsigned mask = 0;
  const void* kind = nullptr;
  void (*combine)(void**, unsigned) = nullptr;
  void* operands[32] = {};
};

struct Worker {
  void* scheduler_sp = nullptr;
  Fiber* current = nullptr;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Launch* launch = nullptr;
  uint3 block_idx{};
  int threads = 0;    // of the running block
  int remaining = 0;  // its threads not done
  int at_barrier = 0;
  bool forward = true;  // direction of the current pass
  bool aborted = false;
  std::vector<char> signal_stack = std::vector<char>(64 * 1024);
  bool signal_stack_set = false;
};

__attribute__((tls_model("initial-exec"))) thread_local Worker* tls_worker = nullptr;
std::mutex error_mutex;

void block_error(Worker& w, const std::string& what) {
  std::lock_guard<std::mutex> lock(error_mutex);
  Fiber* f = w.current;
  if (f != nullptr)
    fprintf(stderr, "glmv CUDA emulator: kernel %s, block (%u, %u, %u), thread (%u, %u, %u): %s\n",
            w.launch->kernel->name, w.block_idx.x, w.block_idx.y, w.block_idx.z, f->lane.thread_idx.x,
            f->lane.thread_idx.y, f->lane.thread_idx.z, what.c_str());
  else
    fprintf(stderr, "glmv CUDA emulator: kernel %s, block (%u, %u, %u): %s\n", w.launch->kernel->name,
            w.block_idx.x, w.block_idx.y, w.block_idx.z, what.c_str());
  w.launch->failed = true;
  w.aborted = true;
}

// Stops the running thread of `w`'s block: reports `what`, records `fault` (the GPU's error for it, when it is not a
// plain launch failure) and goes back to the scheduler, which abandons the block.
[[noreturn]] void abandon_thread(Worker& w, const std::string& what, CUresult fault = CUDA_SUCCESS) {
  block_error(w, what);
  if (fault != CUDA_SUCCESS) w.launch->fault = fault;
  glmv_emu_switch(&w.current->sp, w.scheduler_sp);
  __builtin_unreachable();
}

// Hands the worker on from `from`, which waits or is done: to the next runnable fiber of the scheduler's pass (in
// its direction), else back to the scheduler. Returns when `from` is resumed.
void pass_on(Worker& w, Fiber& from) {
  Fiber* next = nullptr;
  if (!w.aborted) {
    int i = static_cast<int>(&from - w.fibers.data()), step = w.forward ? 1 : -1;
    for (int j = i + step; j >= 0 && j < w.threads; j += step)
      if (w.fibers[j].state == State::RUNNABLE) {
        next = &w.fibers[j];
        break;
      }
  }
  if (next == nullptr) {
    glmv_emu_switch(&from.sp, w.scheduler_sp);
    return;
  }
  w.current = next;
  glmv_emu_switch(&from.sp, next->sp);
}

[[noreturn]] void fiber_entry() {
  Worker& w = *tls_worker;
  Fiber& f = *w.current;
  w.launch->kernel->run(w.launch->bound);
  f.state = State::DONE;
  --w.remaining;
  pass_on(w, f);
  __builtin_unreachable();
}

void start_fiber(Fiber& f) {
  if (f.stack == nullptr) {
    char* base = static_cast<char*>(
        mmap(nullptr, STACK_BYTES + PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    if (base == MAP_FAILED) {
      perror("glmv CUDA emulator: fiber stack");
      abort();
    }
    mprotect(base, PAGE, PROT_NONE);
    f.stack = base + PAGE;
  }
  // The frame glmv_emu_switch pops: six registers, then the "return" into fiber_entry, entered with the stack
  // aligned as after a call.
  uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack) + STACK_BYTES) & ~uintptr_t(15);
  uint64_t* sp = reinterpret_cast<uint64_t*>(top);
  *--sp = 0;
  *--sp = reinterpret_cast<uint64_t>(&fiber_entry);
  for (int r = 0; r < 6; ++r) *--sp = 0;
  f.sp = sp;
  f.state = State::RUNNABLE;
}

std::string describe_waits(Worker& w, int threads) {
  std::string s;
  int at_barrier = 0, done = 0;
  for (int i = 0; i < threads; ++i) {
    at_barrier += w.fibers[i].state == State::AT_BARRIER;
    done += w.fibers[i].state == State::DONE;
  }
  s += std::to_string(at_barrier) + " threads at __syncthreads, " + std::to_string(done) + " done";
  for (size_t i = 0; i < w.warps.size(); ++i) {
    const Warp& wp = w.warps[i];
    if (wp.arrived == 0) continue;
    char line[160];
    snprintf(line, sizeof line, "; warp %zu: lanes %08x at a warp collective with mask %08x", i, wp.arrived, wp.mask);
    s += line;
  }
  return s;
}

void complete_collective(Worker& w, Warp& wp) {
  wp.combine(wp.operands, wp.arrived);
  int base = static_cast<int>(&wp - w.warps.data()) * 32;
  for (int l = 0; l < 32; ++l)
    if (wp.arrived >> l & 1) w.fibers[base + l].state = State::RUNNABLE;
  wp.arrived = 0;
}

// Real shared memory starts each block undefined. Here it starts as 0xff bytes (NaN as f32, BF16 and FP8, all ones as
// an index), so a kernel that reads what no thread of its block wrote computes NaN or faults, instead of quietly
// reusing the previous block's values (which a GPU may or may not have left there).
void poison_shared(const Module* m) {
  if (m == nullptr || m->shared_bytes == 0 || m->touch_shared == nullptr) return;
  m->touch_shared();
  void* shared = nullptr;
  if (dlinfo(m->handle, RTLD_DI_TLS_DATA, &shared) == 0 && shared != nullptr) memset(shared, 0xff, m->shared_bytes);
}

void run_block(Worker& w, Launch& launch, uint64_t linear_block) {
  poison_shared(launch.module);
  dim3 g = launch.grid, b = launch.block;
  w.block_idx = uint3{static_cast<unsigned>(linear_block % g.x), static_cast<unsigned>(linear_block / g.x % g.y),
                      static_cast<unsigned>(linear_block / ((uint64_t)g.x * g.y))};
  int threads = static_cast<int>(b.x * b.y * b.z);
  if (w.fibers.size() < static_cast<size_t>(threads)) w.fibers.resize(threads);
  int warps = (threads + 31) / 32;
  w.warps.assign(warps, Warp{});
  for (int i = 0; i < threads; ++i) {
    Fiber& f = w.fibers[i];
    f.lane.thread_idx = uint3{i % b.x, i / b.x % b.y, i / (b.x * b.y)};
    f.lane.block_idx = w.block_idx;
    f.lane.block_dim = b;
    f.lane.grid_dim = g;
    f.warp = i / 32;
    f.lane_id = i % 32;
    w.warps[f.warp].present |= 1u << f.lane_id;
    start_fiber(f);
  }
  w.threads = threads;
  w.remaining = threads;
  w.at_barrier = 0;
  w.aborted = false;
  w.forward = true;
  while (w.remaining > 0 && !w.aborted) {
    // A pass: the first runnable fiber in this direction runs, and each hands on to the next (pass_on).
    Fiber* first = nullptr;
    for (int n = 0; n < threads; ++n) {
      Fiber& f = w.fibers[w.forward ? n : threads - 1 - n];
      if (f.state == State::RUNNABLE) {
        first = &f;
        break;
      }
    }
    if (first != nullptr) {
      w.current = first;
      glmv_emu_switch(&w.scheduler_sp, first->sp);
      w.current = nullptr;
      w.forward = !w.forward;
      continue;
    }
    // Nothing can run: a barrier every live thread waits on, else the collectives on "the lanes that got here".
    int remaining = w.remaining;
    if (w.at_barrier == remaining) {
      for (int i = 0; i < threads; ++i)
        if (w.fibers[i].state == State::AT_BARRIER) w.fibers[i].state = State::RUNNABLE;
      w.at_barrier = 0;
      continue;
    }
    bool released = false;
    for (Warp& wp : w.warps)
      if (wp.arrived != 0 && wp.mask == GLMV_EMU_ACTIVE_MASK) {
        complete_collective(w, wp);
        released = true;
      }
    if (released) continue;
    block_error(w, "deadlock: " + describe_waits(w, threads));
  }
}

void work(Worker& w, Launch& launch) {
  tls_worker = &w;
  w.launch = &launch;
  if (!w.signal_stack_set) {
    stack_t ss{};
    ss.ss_sp = w.signal_stack.data();
    ss.ss_size = w.signal_stack.size();
    sigaltstack(&ss, nullptr);
    w.signal_stack_set = true;
  }
  while (!launch.failed) {
    uint64_t b = launch.next++;
    if (b >= launch.blocks) break;
    run_block(w, launch, b);
  }
  w.launch = nullptr;
}

// Blocks of a launch run on the calling thread and on GLMV_EMU_THREADS - 1 (default: every CPU) pool threads.
class Pool {
 public:
  Pool() {
    unsigned n = std::thread::hardware_concurrency();
    if (const char* e = getenv("GLMV_EMU_THREADS")) n = static_cast<unsigned>(atoi(e));
    if (n == 0) n = 1;
    workers_.resize(n);
    for (auto& w : workers_) w = std::make_unique<Worker>();
    for (unsigned i = 1; i < n; ++i) threads_.emplace_back([this, i] { serve(*workers_[i]); });
  }

  void run(Launch& launch) {
    // One launch at a time (streams of several host threads, e.g. tests running in parallel, take turns).
    std::lock_guard<std::mutex> one_at_a_time(launch_m_);
    size_t helpers = std::min<uint64_t>(threads_.size(), launch.blocks - 1);
    {
      std::lock_guard<std::mutex> lock(m_);
      job_ = &launch;
      wanted_ = helpers;
      busy_ = helpers;
      ++generation_;
    }
    if (helpers > 0) start_.notify_all();
    work(*workers_[0], launch);
    std::unique_lock<std::mutex> lock(m_);
    done_.wait(lock, [&] { return busy_ == 0; });
    job_ = nullptr;
  }

 private:
  void serve(Worker& w) {
    uint64_t seen = 0;
    for (;;) {
      Launch* job;
      {
        std::unique_lock<std::mutex> lock(m_);
        start_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (wanted_ == 0) continue;
        --wanted_;
        job = job_;
      }
      work(w, *job);
      std::lock_guard<std::mutex> lock(m_);
      if (--busy_ == 0) done_.notify_all();
    }
  }

  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::thread> threads_;
  std::mutex m_, launch_m_;
  std::condition_variable start_, done_;
  Launch* job_ = nullptr;
  uint64_t generation_ = 0;
  size_t wanted_ = 0, busy_ = 0;
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: its threads outlive main
  return *p;
}

void on_segv(int sig, siginfo_t* info, void*) {
  Worker* w = tls_worker;
  if (w == nullptr || w->current == nullptr || w->launch == nullptr) {
    signal(sig, SIG_DFL);
    raise(sig);
    return;
  }
  Fiber& f = *w->current;
  char what[160];
  uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
  uintptr_t stack = reinterpret_cast<uintptr_t>(f.stack);
  if (addr + PAGE >= stack && addr < stack)
    snprintf(what, sizeof what, "stack overflow (the emulator gives each thread %zu KiB)", STACK_BYTES / 1024);
  else
    snprintf(what, sizeof what, "invalid memory access at %p (outside every allocation, or past its end)",
             info->si_addr);
  abandon_thread(*w, what, CUDA_ERROR_ILLEGAL_ADDRESS);
}

void install_segv_handler() {
  struct sigaction sa{};
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
  sigaction(SIGSEGV, &sa, nullptr);
  sigaction(SIGBUS, &sa, nullptr);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// What kernels call.
extern "C" GlmvEmuLane* glmv_emu_lane() { return &tls_worker->current->lane; }

extern "C" void glmv_emu_syncthreads() {
  Worker& w = *tls_worker;
  Fiber& f = *w.current;
  f.state = State::AT_BARRIER;
  ++w.at_barrier;
  pass_on(w, f);  // waits: its state says on what
}

extern "C" [[noreturn]] void glmv_emu_fail(const char* what) { abandon_thread(*tls_worker, what); }

// What GCC's -fsanitize=alignment passes its handler (the layout of its libubsan ABI, version 1).
struct UbsanLocation {
  const char* file;
  uint32_t line, column;
};
struct UbsanType {
  uint16_t kind, info;
  char name[1];
};
struct UbsanTypeMismatch {
  UbsanLocation at;
  const UbsanType* type;
  unsigned char log_alignment, check_kind;
};

// A kernel accessed `pointer` as a type that it is not aligned for. Kernels are linked without libubsan, so their
// checks land here (build.sh makes them not recoverable, so only this entry point is called).
extern "C" [[noreturn]] void __ubsan_handle_type_mismatch_v1_abort(UbsanTypeMismatch* data, uintptr_t pointer) {
  Worker* w = tls_worker;
  if (w == nullptr || w->current == nullptr || w->launch == nullptr) abort();
  char what[400];
  snprintf(what, sizeof what, "misaligned address: %p accessed as %s (%u-byte alignment) at %s:%u:%u",
           reinterpret_cast<void*>(pointer), data->type->name, 1u << data->log_alignment, data->at.file,
           data->at.line, data->at.column);
  abandon_thread(*w, what, CUDA_ERROR_MISALIGNED_ADDRESS);
}

extern "C" void glmv_emu_warp_collective(unsigned mask, const void* kind, void* operand,
                                         void (*combine)(void**, unsigned)) {
  Worker& w = *tls_worker;
  Fiber& f = *w.current;
  Warp& wp = w.warps[f.warp];
  unsigned me = 1u << f.lane_id;
  if (mask != GLMV_EMU_ACTIVE_MASK && !(mask & me)) glmv_emu_fail("a warp collective whose mask leaves out its own lane");
  if (mask != GLMV_EMU_ACTIVE_MASK && (mask & ~wp.present))
    glmv_emu_fail("a warp collective whose mask names lanes this block does not have");
  if (wp.arrived == 0) {
    wp.kind = kind;
    wp.mask = mask;
    wp.combine = combine;
  } else if (wp.kind != kind || wp.mask != mask) {
    glmv_emu_fail("lanes of one warp wait at different warp collectives (divergent shuffle or mma)");
  }
  wp.operands[f.lane_id] = operand;
  wp.arrived |= me;
  if (mask != GLMV_EMU_ACTIVE_MASK && (wp.arrived & mask) == mask) {
    complete_collective(w, wp);
    return;
  }
  f.state = State::AT_WARP;
  pass_on(w, f);  // waits: its state says on what
}

namespace {
struct Mma {
  float* d;
  const uint32_t* a;
  const uint32_t* b;
};

float bf16_at(uint32_t reg, int half) {
  uint32_t bits = (half ? reg >> 16 : reg & 0xffffu) << 16;
  float v;
  memcpy(&v, &bits, 4);
  return v;
}

float e4m3_at(uint32_t reg, int byte) {
  uint32_t code = reg >> (8 * byte) & 0xffu;
  int sign = code >> 7, exp = code >> 3 & 15, man = code & 7;
  float v;
  if (exp == 15 && man == 7) v = std::nanf("");
  else if (exp == 0) v = std::ldexp(static_cast<float>(man), -9);
  else v = std::ldexp(static_cast<float>(8 + man), exp - 10);
  return sign ? -v : v;
}

// The PTX ISA's fragment layouts (mma.m16n8k16 for 16-bit types, mma.m16n8k32 for 8-bit types): with g = lane / 4
// and t = lane % 4, A register r holds row g (+ 8 for odd r), columns (r >= 2 ? K / 2 : 0) + t * E + 0..E-1 with E
// elements per register (2 or 4); B register r holds column g, rows (r ? K / 2 : 0) + t * E + 0..E-1; the f32
// accumulators d[0..3] are rows g, g, g + 8, g + 8 and columns 2t, 2t + 1.
template <int K, int E>
void mma_combine(void** lanes, unsigned arrived) {
  if (arrived != 0xffffffffu) glmv_emu_fail("mma.sync without every lane of the warp");
  float A[16][K], B[K][8];
  for (int l = 0; l < 32; ++l) {
    const Mma& m = *static_cast<Mma*>(lanes[l]);
    int g = l / 4, t = l % 4;
    for (int r = 0; r < 4; ++r)
      for (int e = 0; e < E; ++e) {
        int row = g + (r & 1) * 8, col = (r >= 2 ? K / 2 : 0) + t * E + e;
        A[row][col] = E == 2 ? bf16_at(m.a[r], e) : e4m3_at(m.a[r], e);
      }
    for (int r = 0; r < 2; ++r)
      for (int e = 0; e < E; ++e) B[(r ? K / 2 : 0) + t * E + e][g] = E == 2 ? bf16_at(m.b[r], e) : e4m3_at(m.b[r], e);
  }
  float D[16][8];
  for (int l = 0; l < 32; ++l) {
    const Mma& m = *static_cast<Mma*>(lanes[l]);
    int g = l / 4, t = l % 4;
    for (int i = 0; i < 4; ++i) D[g + (i >> 1) * 8][2 * t + (i & 1)] = m.d[i];
  }
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j) {
      float s = D[i][j];
      for (int k = 0; k < K; ++k) s += A[i][k] * B[k][j];
      D[i][j] = s;
    }
  for (int l = 0; l < 32; ++l) {
    const Mma& m = *static_cast<Mma*>(lanes[l]);
    int g = l / 4, t = l % 4;
    for (int i = 0; i < 4; ++i) m.d[i] = D[g + (i >> 1) * 8][2 * t + (i & 1)];
  }
}
}  // namespace

extern "C" void glmv_emu_mma(float d[4], const uint32_t a[4], const uint32_t b[2], int shape) {
  Mma me{d, a, b};
  auto combine = shape == GLMV_EMU_MMA_BF16_M16N8K16 ? &mma_combine<16, 2> : &mma_combine<32, 4>;
  glmv_emu_warp_collective(0xffffffffu, reinterpret_cast<const void*>(combine), &me, combine);
}

// ---------------------------------------------------------------------------------------------------------------
// The driver API.
namespace {

// One context, one device: CUDA 13 numbers for an H200-like sm_90 part, with GLMV_EMU_MEMORY_GIB of memory.
constexpr int SM_COUNT = 132;

struct Allocation {
  char* base;
  size_t span;
  size_t bytes;
};

using Op = std::function<CUresult()>;  // what a captured stream records

// Stream capture as CUDA defines it for glmv's use (thread-local mode): operations are recorded, not run; a call
// that needs the host to wait (a synchronisation, a copy to or from pageable memory, a synchronous allocation)
// fails with CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and invalidates the capture, whose later calls and end fail with
// CUDA_ERROR_STREAM_CAPTURE_INVALIDATED. Memory allocated while capturing belongs to the graph: the emulator keeps
// it (frees of it are the graph's), so a replay never writes into memory handed out since.
struct Stream {
  bool capturing = false;
  bool invalidated = false;
  std::vector<Op>* capture = nullptr;
};

struct Graph {
  std::vector<Op> ops;
};

struct Event {
  std::chrono::steady_clock::time_point at;
};

struct Driver {
  std::mutex m;
  std::map<uintptr_t, Allocation> allocations;  // by start address
  size_t allocated = 0;
  size_t total = 0;
  std::set<uintptr_t> graph_owned;  // allocated while capturing
  std::set<const void*> pinned;       // cuMemHostAlloc
  std::vector<Module> modules;
  std::string modules_dir;
  bool initialised = false;
};

Driver& driver() {
  static Driver* d = new Driver();
  return *d;
}

int fake_context = 1;
int fake_pool = 1;
Stream legacy_stream;

__attribute__((tls_model("initial-exec"))) thread_local Stream* captured_here = nullptr;  // the stream this thread captures

Stream* stream_of(CUstream s) { return s == nullptr ? &legacy_stream : reinterpret_cast<Stream*>(s); }

// A call that cannot be recorded, made while this thread captures (on `st`, or on no stream in particular).
CUresult breaks_capture(Stream* st) {
  if (st == nullptr || !st->capturing) st = captured_here;
  if (st == nullptr || !st->capturing) return CUDA_SUCCESS;
  st->invalidated = true;
  return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
}

bool pinned(const void* p) {
  Driver& d = driver();
  std::lock_guard<std::mutex> lock(d.m);
  return d.pinned.count(p) != 0;
}

// Runs `op` now, or records it when the stream is being captured into a graph.
CUresult on_stream(CUstream s, std::function<CUresult()> op) {
  Stream* st = stream_of(s);
  if (st->capturing) {
    if (st->invalidated) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    st->capture->push_back(std::move(op));
    return CUDA_SUCCESS;
  }
  // The legacy stream cannot be used while this thread captures; other streams run as usual.
  if (s == nullptr)
    if (CUresult r = breaks_capture(nullptr)) return r;
  return op();
}

// A copy between the host and a stream: pageable host memory cannot be captured.
CUresult host_copy(CUstream s, const void* host, std::function<CUresult()> op) {
  Stream* st = stream_of(s);
  if (st->capturing && !pinned(host)) return breaks_capture(st);
  return on_stream(s, std::move(op));
}

// The size of a loaded module's thread-local segment (0 without one).
size_t tls_segment_bytes(void* handle) {
  size_t modid = 0;
  if (dlinfo(handle, RTLD_DI_TLS_MODID, &modid) != 0 || modid == 0) return 0;
  struct Query {
    size_t modid, bytes;
  } q{modid, 0};
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        auto* q = static_cast<Query*>(data);
        if (info->dlpi_tls_modid != q->modid) return 0;
        for (int i = 0; i < info->dlpi_phnum; ++i)
          if (info->dlpi_phdr[i].p_type == PT_TLS) q->bytes = info->dlpi_phdr[i].p_memsz;
        return 1;
      },
      &q);
  return q.bytes;
}

void load_modules(Driver& d) {
  const char* dir = getenv("GLMV_EMU_MODULES");
  if (dir == nullptr) {
    Dl_info info{};
    dladdr(reinterpret_cast<void*>(&load_modules), &info);
    std::string self = info.dli_fname != nullptr ? info.dli_fname : "";
    d.modules_dir = self.substr(0, self.rfind('/')) + "/modules";
  } else {
    d.modules_dir = dir;
  }
  DIR* dp = opendir(d.modules_dir.c_str());
  if (dp == nullptr) {
    fprintf(stderr, "glmv CUDA emulator: no kernel modules in %s\n", d.modules_dir.c_str());
    return;
  }
  while (dirent* e = readdir(dp)) {
    std::string name = e->d_name;
    if (name.size() < 4 || name.substr(name.size() - 3) != ".so") continue;
    std::string path = d.modules_dir + "/" + name;
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) {
      fprintf(stderr, "glmv CUDA emulator: %s\n", dlerror());
      continue;
    }
    auto* table = static_cast<const GlmvEmuKernel*>(dlsym(h, "glmv_emu_kernels"));
    auto* touch = reinterpret_cast<void (*)()>(dlsym(h, "glmv_emu_touch_shared"));
    if (table == nullptr) continue;
    const GlmvEmuKernel* end = table;
    while (end->name != nullptr) ++end;
    d.modules.push_back(Module{h, table, end, touch, tls_segment_bytes(h)});
  }
  closedir(dp);
}

const GlmvEmuKernel* find_kernel(const char* name) {
  Driver& d = driver();
  const GlmvEmuKernel* found = nullptr;
  for (const Module& m : d.modules)
    for (const GlmvEmuKernel* k = m.kernels; k->name != nullptr; ++k)
      if (strcmp(k->name, name) == 0) {
        if (found != nullptr) fprintf(stderr, "glmv CUDA emulator: kernel %s is in two modules\n", name);
        found = k;
      }
  return found;
}

bool valid_device_range(CUdeviceptr p, size_t bytes) {
  Driver& d = driver();
  std::lock_guard<std::mutex> lock(d.m);
  auto it = d.allocations.upper_bound(static_cast<uintptr_t>(p));
  if (it == d.allocations.begin()) return false;
  --it;
  return p >= it->first && p + bytes <= it->first + it->second.bytes;
}

CUresult check_range(CUdeviceptr p, size_t bytes, const char* what) {
  if (bytes == 0 || valid_device_range(p, bytes)) return CUDA_SUCCESS;
  fprintf(stderr, "glmv CUDA emulator: %s of %zu bytes at 0x%llx is outside every device allocation\n", what, bytes,
          static_cast<unsigned long long>(p));
  return CUDA_ERROR_INVALID_VALUE;
}

// GLMV_EMU_PROFILE=1: launches and emulated seconds per kernel, printed at exit (where the emulator's time goes).
struct Profile {
  std::mutex m;
  std::map<std::string, std::pair<uint64_t, double>> by_kernel;
  ~Profile() {
    std::vector<std::pair<double, std::string>> rows;
    for (auto& [name, v] : by_kernel) rows.push_back({v.second, name});
    std::sort(rows.rbegin(), rows.rend());
    fprintf(stderr, "glmv CUDA emulator profile (kernel, launches, seconds):\n");
    for (auto& [secs, name] : rows) fprintf(stderr, "  %-40s %10llu %10.3f\n", name.c_str(),
                                            static_cast<unsigned long long>(by_kernel[name].first), secs);
  }
};

Profile* profile() {
  static Profile* p = getenv("GLMV_EMU_PROFILE") != nullptr ? new Profile() : nullptr;
  return p;
}

void print_profile() { delete profile(); }

const Module* module_of(const GlmvEmuKernel* k) {
  for (const Module& m : driver().modules)
    if (k >= m.kernels && k < m.kernels_end) return &m;
  return nullptr;
}

CUresult launch(const GlmvEmuKernel* k, dim3 grid, dim3 block, void* bound) {
  Launch l;
  l.kernel = k;
  l.module = module_of(k);
  l.bound = bound;
  l.grid = grid;
  l.block = block;
  l.blocks = static_cast<uint64_t>(grid.x) * grid.y * grid.z;
  // The limits a GPU's driver refuses a launch beyond (sm_90: grid x < 2^31, y and z <= 65535; block x and y <= 1024,
  // z <= 64, 1024 threads in all).
  uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (l.blocks == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535 || threads == 0 || threads > 1024 ||
      block.z > 64)
    return CUDA_ERROR_INVALID_VALUE;
  auto start = std::chrono::steady_clock::now();
  pool().run(l);
  if (Profile* p = profile()) {
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::lock_guard<std::mutex> lock(p->m);
    auto& entry = p->by_kernel[k->name];
    entry.first += 1;
    entry.second += secs;
  }
  if (CUresult fault = l.fault) return fault;
  return l.failed ? CUDA_ERROR_LAUNCH_FAILED : CUDA_SUCCESS;
}

}  // namespace

extern "C" {

CUresult cuInit(unsigned int) {
  Driver& d = driver();
  std::lock_guard<std::mutex> lock(d.m);
  if (d.initialised) return CUDA_SUCCESS;
  d.initialised = true;
  double gib = 16;
  if (const char* e = getenv("GLMV_EMU_MEMORY_GIB")) gib = atof(e);
  d.total = static_cast<size_t>(gib * (1ull << 30));
  load_modules(d);
  install_segv_handler();
  if (profile() != nullptr) atexit(print_profile);
  return CUDA_SUCCESS;
}

CUresult cuDriverGetVersion(int* v) {
  *v = 13000;
  return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int* n) {
  *n = 1;
  return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice* dev, int ordinal) {
  if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
  *dev = 0;
  return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char* name, int len, CUdevice) {
  snprintf(name, len, "glmv CUDA emulator (host CPU)");
  return CUDA_SUCCESS;
}

CUresult cuDeviceGetUuid(CUuuid* uuid, CUdevice) {
  memset(uuid, 0, sizeof *uuid);
  return CUDA_SUCCESS;
}


CUresult cuDeviceTotalMem(size_t* bytes, CUdevice) {
  *bytes = driver().total;
  return CUDA_SUCCESS;
}

CUresult cuDeviceGetAttribute(int* v, CUdevice_attribute attr, CUdevice) {
  switch (attr) {
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *v = 9; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *v = 0; break;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *v = SM_COUNT; break;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *v = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: *v = 2048; break;
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *v = 32; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: *v = 48 * 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: *v = 227 * 1024; break;
    case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: *v = 1; break;
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: *v = 1; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: *v = 0x7fffffff; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y:
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: *v = 65535; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X:
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: *v = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: *v = 64; break;
    case CU_DEVICE_ATTRIBUTE_CLOCK_RATE: *v = 1980000; break;
    case CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE: *v = 2619000; break;
    case CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH: *v = 6144; break;
    default: *v = 0; break;
  }
  return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice) {
  *ctx = reinterpret_cast<CUcontext>(&fake_context);
  return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease(CUdevice) { return CUDA_SUCCESS; }
CUresult cuCtxSetCurrent(CUcontext) { return CUDA_SUCCESS; }
CUresult cuCtxGetCurrent(CUcontext* ctx) {
  *ctx = reinterpret_cast<CUcontext>(&fake_context);
  return CUDA_SUCCESS;
}
CUresult cuCtxGetDevice(CUdevice* dev) {
  *dev = 0;
  return CUDA_SUCCESS;
}
CUresult cuCtxPushCurrent(CUcontext) { return CUDA_SUCCESS; }
CUresult cuCtxPopCurrent(CUcontext* ctx) {
  if (ctx != nullptr) *ctx = reinterpret_cast<CUcontext>(&fake_context);
  return CUDA_SUCCESS;
}
CUresult cuCtxSynchronize() { return breaks_capture(nullptr); }
CUresult cuCtxSetFlags(unsigned int) { return CUDA_SUCCESS; }
CUresult cuCtxGetStreamPriorityRange(int* least, int* greatest) {
  if (least != nullptr) *least = 0;
  if (greatest != nullptr) *greatest = -5;
  return CUDA_SUCCESS;
}
CUresult cuCtxGetLimit(size_t* v, CUlimit) {
  *v = 0;
  return CUDA_SUCCESS;
}
CUresult cuCtxSetLimit(CUlimit, size_t) { return CUDA_SUCCESS; }

CUresult cuGetErrorName(CUresult e, const char** s) {
  switch (e) {
    case CUDA_SUCCESS: *s = "CUDA_SUCCESS"; break;
    case CUDA_ERROR_INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
    case CUDA_ERROR_OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
    case CUDA_ERROR_NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
    case CUDA_ERROR_ILLEGAL_ADDRESS: *s = "CUDA_ERROR_ILLEGAL_ADDRESS"; break;
    case CUDA_ERROR_MISALIGNED_ADDRESS: *s = "CUDA_ERROR_MISALIGNED_ADDRESS"; break;
    case CUDA_ERROR_LAUNCH_FAILED: *s = "CUDA_ERROR_LAUNCH_FAILED"; break;
    case CUDA_ERROR_NOT_SUPPORTED: *s = "CUDA_ERROR_NOT_SUPPORTED"; break;
    case CUDA_ERROR_ILLEGAL_STATE: *s = "CUDA_ERROR_ILLEGAL_STATE"; break;
    case CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: *s = "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"; break;
    case CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: *s = "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"; break;
    default: *s = "CUDA_ERROR_UNKNOWN"; break;
  }
  return CUDA_SUCCESS;
}
CUresult cuGetErrorString(CUresult e, const char** s) {
  cuGetErrorName(e, s);
  return CUDA_SUCCESS;
}

// Streams run everything at once (in order), except while captured.
CUresult cuStreamCreate(CUstream* s, unsigned int) {
  *s = reinterpret_cast<CUstream>(new Stream());
  return CUDA_SUCCESS;
}
CUresult cuStreamCreateWithPriority(CUstream* s, unsigned int flags, int) { return cuStreamCreate(s, flags); }
CUresult cuStreamDestroy(CUstream s) {
  if (s != nullptr) delete reinterpret_cast<Stream*>(s);
  return CUDA_SUCCESS;
}
CUresult cuStreamSynchronize(CUstream s) { return breaks_capture(stream_of(s)); }
CUresult cuStreamQuery(CUstream) { return CUDA_SUCCESS; }
CUresult cuStreamWaitEvent(CUstream, CUevent, unsigned int) { return CUDA_SUCCESS; }

CUresult cuEventCreate(CUevent* e, unsigned int) {
  *e = reinterpret_cast<CUevent>(new Event{std::chrono::steady_clock::now()});
  return CUDA_SUCCESS;
}
CUresult cuEventDestroy(CUevent e) {
  delete reinterpret_cast<Event*>(e);
  return CUDA_SUCCESS;
}
CUresult cuEventRecord(CUevent e, CUstream s) {
  Event* ev = reinterpret_cast<Event*>(e);
  return on_stream(s, [ev] {
    ev->at = std::chrono::steady_clock::now();
    return CUDA_SUCCESS;
  });
}
CUresult cuEventSynchronize(CUevent) { return CUDA_SUCCESS; }
CUresult cuEventQuery(CUevent) { return CUDA_SUCCESS; }
CUresult cuEventElapsedTime(float* ms, CUevent start, CUevent end) {
  auto d = reinterpret_cast<Event*>(end)->at - reinterpret_cast<Event*>(start)->at;
  *ms = std::chrono::duration<float, std::milli>(d).count();
  return CUDA_SUCCESS;
}

// Memory: each allocation's last byte is followed by an inaccessible page.
CUresult allocate(CUdeviceptr* p, size_t bytes) {
  Driver& d = driver();
  size_t rounded = ((bytes == 0 ? 1 : bytes) + 15) & ~size_t(15);
  size_t span = (rounded + PAGE - 1) / PAGE * PAGE + PAGE;
  {
    std::lock_guard<std::mutex> lock(d.m);
    if (d.allocated + rounded > d.total) return CUDA_ERROR_OUT_OF_MEMORY;
  }
  char* base = static_cast<char*>(
      mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
  if (base == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  mprotect(base + span - PAGE, PAGE, PROT_NONE);
  char* start = base + span - PAGE - rounded;
  std::lock_guard<std::mutex> lock(d.m);
  d.allocations[reinterpret_cast<uintptr_t>(start)] = Allocation{base, span, rounded};
  d.allocated += rounded;
  *p = reinterpret_cast<CUdeviceptr>(start);
  return CUDA_SUCCESS;
}
CUresult release(CUdeviceptr p) {
  Driver& d = driver();
  std::lock_guard<std::mutex> lock(d.m);
  if (d.graph_owned.count(static_cast<uintptr_t>(p)) != 0) return CUDA_SUCCESS;
  auto it = d.allocations.find(static_cast<uintptr_t>(p));
  if (it == d.allocations.end()) return CUDA_ERROR_INVALID_VALUE;
  munmap(it->second.base, it->second.span);
  d.allocated -= it->second.bytes;
  d.allocations.erase(it);
  return CUDA_SUCCESS;
}
CUresult cuMemAlloc(CUdeviceptr* p, size_t bytes) {
  if (CUresult r = breaks_capture(nullptr)) return r;
  return allocate(p, bytes);
}
CUresult cuMemFree(CUdeviceptr p) {
  if (CUresult r = breaks_capture(nullptr)) return r;
  return release(p);
}
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, CUstream s) {
  Stream* st = stream_of(s);
  if (!st->capturing) return allocate(p, bytes);
  if (st->invalidated) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
  if (CUresult r = allocate(p, bytes)) return r;
  Driver& d = driver();
  std::lock_guard<std::mutex> lock(d.m);
  d.graph_owned.insert(static_cast<uintptr_t>(*p));
  return CUDA_SUCCESS;
}
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) {
  Stream* st = stream_of(s);
  if (st->capturing) return st->invalidated ? CUDA_ERROR_STREAM_CAPTURE_INVALIDATED : CUDA_SUCCESS;
  return release(p);
}
CUresult cuMemGetInfo(size_t* free, size_t* total) {
  Driver& d = driver();
  std::lock_guard<std::mutex> lock(d.m);
  *free = d.total - d.allocated;
  *total = d.total;
  return CUDA_SUCCESS;
}
CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned int) {
  *p = malloc(bytes == 0 ? 1 : bytes);
  if (*p == nullptr) return CUDA_ERROR_OUT_OF_MEMORY;
  Driver& d = driver();
  std::lock_guard<std::mutex> lock(d.m);
  d.pinned.insert(*p);
  return CUDA_SUCCESS;
}
CUresult cuMemFreeHost(void* p) {
  {
    Driver& d = driver();
    std::lock_guard<std::mutex> lock(d.m);
    d.pinned.erase(p);
  }
  free(p);
  return CUDA_SUCCESS;
}

CUresult cuMemcpyHtoDAsync(CUdeviceptr dst, const void* src, size_t bytes, CUstream s) {
  if (CUresult r = check_range(dst, bytes, "copy to the device")) return r;
  return host_copy(s, src, [=] {
    memcpy(reinterpret_cast<void*>(dst), src, bytes);
    return CUDA_SUCCESS;
  });
}
CUresult cuMemcpyHtoD(CUdeviceptr dst, const void* src, size_t bytes) {
  return cuMemcpyHtoDAsync(dst, src, bytes, nullptr);
}
CUresult cuMemcpyDtoHAsync(void* dst, CUdeviceptr src, size_t bytes, CUstream s) {
  if (CUresult r = check_range(src, bytes, "copy from the device")) return r;
  return host_copy(s, dst, [=] {
    memcpy(dst, reinterpret_cast<const void*>(src), bytes);
    return CUDA_SUCCESS;
  });
}
CUresult cuMemcpyDtoH(void* dst, CUdeviceptr src, size_t bytes) { return cuMemcpyDtoHAsync(dst, src, bytes, nullptr); }
CUresult cuMemcpyDtoDAsync(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream s) {
  if (CUresult r = check_range(dst, bytes, "device copy destination")) return r;
  if (CUresult r = check_range(src, bytes, "device copy source")) return r;
  return on_stream(s, [=] {
    memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), bytes);
    return CUDA_SUCCESS;
  });
}
CUresult cuMemcpyDtoD(CUdeviceptr dst, CUdeviceptr src, size_t bytes) {
  return cuMemcpyDtoDAsync(dst, src, bytes, nullptr);
}
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream s) {
  if (CUresult r = check_range(dst, n, "memset")) return r;
  return on_stream(s, [=] {
    memset(reinterpret_cast<void*>(dst), v, n);
    return CUDA_SUCCESS;
  });
}
CUresult cuMemsetD8(CUdeviceptr dst, unsigned char v, size_t n) { return cuMemsetD8Async(dst, v, n, nullptr); }
CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned int v, size_t n, CUstream s) {
  if (CUresult r = check_range(dst, n * 4, "memset")) return r;
  return on_stream(s, [=] {
    uint32_t* p = reinterpret_cast<uint32_t*>(dst);
    for (size_t i = 0; i < n; ++i) p[i] = v;
    return CUDA_SUCCESS;
  });
}
CUresult cuMemsetD32(CUdeviceptr dst, unsigned int v, size_t n) { return cuMemsetD32Async(dst, v, n, nullptr); }

CUresult cuDeviceGetDefaultMemPool(CUmemoryPool* pool, CUdevice) {
  *pool = reinterpret_cast<CUmemoryPool>(&fake_pool);
  return CUDA_SUCCESS;
}
CUresult cuDeviceGetMemPool(CUmemoryPool* pool, CUdevice dev) { return cuDeviceGetDefaultMemPool(pool, dev); }
CUresult cuMemPoolSetAttribute(CUmemoryPool, CUmemPool_attribute, void*) { return CUDA_SUCCESS; }
CUresult cuMemPoolGetAttribute(CUmemoryPool, CUmemPool_attribute, void* v) {
  *static_cast<uint64_t*>(v) = 0;
  return CUDA_SUCCESS;
}
CUresult cuMemPoolTrimTo(CUmemoryPool, size_t) { return CUDA_SUCCESS; }

// Modules: every image maps to the kernels of every emulated module (kernel names are unique across images).
CUresult cuModuleLoadData(CUmodule* m, const void*) {
  *m = reinterpret_cast<CUmodule>(&driver());
  return CUDA_SUCCESS;
}
CUresult cuModuleUnload(CUmodule) { return CUDA_SUCCESS; }
CUresult cuModuleGetFunction(CUfunction* f, CUmodule, const char* name) {
  const GlmvEmuKernel* k = find_kernel(name);
  if (k == nullptr) {
    fprintf(stderr, "glmv CUDA emulator: no emulated kernel %s\n", name);
    return CUDA_ERROR_NOT_FOUND;
  }
  *f = reinterpret_cast<CUfunction>(const_cast<GlmvEmuKernel*>(k));
  return CUDA_SUCCESS;
}
CUresult cuFuncGetAttribute(int* v, CUfunction_attribute attr, CUfunction) {
  *v = attr == CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK ? 1024 : 0;
  return CUDA_SUCCESS;
}
CUresult cuFuncSetAttribute(CUfunction, CUfunction_attribute, int) { return CUDA_SUCCESS; }
CUresult cuFuncSetCacheConfig(CUfunction, CUfunc_cache) { return CUDA_SUCCESS; }

CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                        unsigned int by, unsigned int bz, unsigned int shared_bytes, CUstream s, void** params,
                        void** extra) {
  if (extra != nullptr || shared_bytes > 0) {
    fprintf(stderr, "glmv CUDA emulator: dynamic shared memory and `extra` launch parameters are not emulated\n");
    return CUDA_ERROR_NOT_SUPPORTED;
  }
  const GlmvEmuKernel* k = reinterpret_cast<const GlmvEmuKernel*>(f);
  // The parameters are copied now, as the driver does.
  std::shared_ptr<void> bound(k->bind(params), k->release);
  dim3 grid(gx, gy, gz), block(bx, by, bz);
  return on_stream(s, [=] { return launch(k, grid, block, bound.get()); });
}

CUresult cuLaunchHostFunc(CUstream s, CUhostFn fn, void* data) {
  return on_stream(s, [=] {
    fn(data);
    return CUDA_SUCCESS;
  });
}

// Graphs: a captured stream records its operations; launching the graph runs them in order.
CUresult cuStreamBeginCapture(CUstream s, CUstreamCaptureMode) {
  Stream* st = stream_of(s);
  if (st->capturing || captured_here != nullptr) return CUDA_ERROR_ILLEGAL_STATE;
  st->capturing = true;
  st->invalidated = false;
  st->capture = new std::vector<Op>();
  captured_here = st;
  return CUDA_SUCCESS;
}
CUresult cuStreamEndCapture(CUstream s, CUgraph* g) {
  Stream* st = stream_of(s);
  if (!st->capturing) return CUDA_ERROR_ILLEGAL_STATE;
  std::unique_ptr<std::vector<Op>> ops(st->capture);
  st->capture = nullptr;
  st->capturing = false;
  captured_here = nullptr;
  *g = nullptr;
  if (st->invalidated) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
  *g = reinterpret_cast<CUgraph>(new Graph{std::move(*ops)});
  return CUDA_SUCCESS;
}
CUresult cuStreamIsCapturing(CUstream s, CUstreamCaptureStatus* status) {
  Stream* st = stream_of(s);
  *status = !st->capturing     ? CU_STREAM_CAPTURE_STATUS_NONE
            : st->invalidated ? CU_STREAM_CAPTURE_STATUS_INVALIDATED
                              : CU_STREAM_CAPTURE_STATUS_ACTIVE;
  return CUDA_SUCCESS;
}
CUresult cuGraphInstantiateWithFlags(CUgraphExec* exec, CUgraph g, unsigned long long) {
  *exec = reinterpret_cast<CUgraphExec>(new Graph(*reinterpret_cast<Graph*>(g)));
  return CUDA_SUCCESS;
}
CUresult cuGraphUpload(CUgraphExec, CUstream) { return CUDA_SUCCESS; }
CUresult cuGraphLaunch(CUgraphExec exec, CUstream s) {
  Graph* g = reinterpret_cast<Graph*>(exec);
  return on_stream(s, [g] {
    for (Op& op : g->ops)
      if (CUresult r = op()) return r;
    return CUDA_SUCCESS;
  });
}
CUresult cuGraphDestroy(CUgraph g) {
  delete reinterpret_cast<Graph*>(g);
  return CUDA_SUCCESS;
}
CUresult cuGraphExecDestroy(CUgraphExec e) {
  delete reinterpret_cast<Graph*>(e);
  return CUDA_SUCCESS;
}

}  // extern "C"
