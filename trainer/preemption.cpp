#include "trainer/preemption.h"

#include <csignal>
#include <cstdio>

namespace anvil {

namespace {
volatile std::sig_atomic_t g_signal = 0;

void on_signal(int sig) {
  if (g_signal == 0) g_signal = sig;
}
}  // namespace

void install_preemption_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // a signal must not turn a blocking read or MPI call into an error
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGUSR1, &sa, nullptr);
}

int preemption_signal() { return g_signal; }

void reset_preemption() { g_signal = 0; }

const char* signal_name(int sig) {
  switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGUSR1: return "SIGUSR1";
    case SIGINT: return "SIGINT";
  }
  static char buf[32];
  std::snprintf(buf, sizeof buf, "signal %d", sig);
  return buf;
}

}  // namespace anvil
