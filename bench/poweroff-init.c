// The lower bound for boot benchmarks: an init that does nothing but power the VM off.
#include <sys/reboot.h>
#include <unistd.h>

int main(void) {
    sync();
    reboot(RB_POWER_OFF);
    for (;;) pause();
}
