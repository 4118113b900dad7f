/* fedlora doctor --config FILE: checks a node's setup before it joins
 * (node/doctor.h does the checks; docs/onboarding.md). */
#include "cli/commands.h"
#include "cli/opts.h"
#include "node/doctor.h"
#include "util/err.h"

#include <stdio.h>

static const char *usage_text =
    "usage: fedlora doctor --config FILE [--timeout SECONDS]\n"
    "\n"
    "Checks everything a node needs before it joins, without changing anything:\n"
    "the config, the private keys (files, owner, mode 0600, the .id matching them), the\n"
    "aggregator's identity file, the base model, the data, the state directory and its free\n"
    "disk space, the GPU; then asks the aggregator (STATUS): is it reachable, the same\n"
    "consortium, does it know this node as an active member, are the clocks within 30 s,\n"
    "and is the roster it serves signed by the admin the config pins and listing this node.\n"
    "One line per finding:\n"
    "\n"
    "  ok|warn|FAIL  <check>: <what was found> — <what to do>\n"
    "\n"
    "  --config FILE      the node config (fedlora node init wrote DIR/node.cfg)\n"
    "  --timeout SECONDS  how long each request to the aggregator may wait (10)\n"
    "\n"
    "Exit status: 1 when any check FAILs, else 0 (warnings included).\n";

static void print_finding(const doctor_finding *f, void *arg) {
    char line[3 * DOCTOR_TEXT_MAX];
    doctor_format(f, line, sizeof line);
    printf("%s\n", line);
    fflush(stdout);
}

int cmd_doctor(int argc, char **argv) {
    const char *config = NULL, *timeout = NULL;
    opts_spec spec[] = {{"config", &config}, {"timeout", &timeout}};
    int rc = opts_parse(argc, argv, spec, 2, usage_text);
    if (rc >= 0) return rc;
    if (!config) return opts_missing(usage_text, "--config");
    double secs = 10;
    if (timeout && opts_double(timeout, "--timeout", 0.01, 3600, &secs) != 0) return opts_fail();
    doctor_options o = {
        .config = config, .timeout_ms = (int)(secs * 1000 + 0.5), .on_finding = print_finding};
    doctor_report r = {0};
    if (doctor_run(&o, &r) != 0) {
        doctor_report_free(&r);
        return opts_fail();
    }
    size_t fails = doctor_count(&r, DOCTOR_FAIL), warns = doctor_count(&r, DOCTOR_WARN);
    printf("\n%zu ok, %zu warn, %zu FAIL: ", doctor_count(&r, DOCTOR_OK), warns, fails);
    if (fails)
        printf("fix each FAIL above, then run doctor again\n");
    else
        printf("the node can join%s: fedlora node --config %s\n",
               warns ? " (read the warnings first)" : "", config);
    doctor_report_free(&r);
    return fails ? 1 : 0;
}
