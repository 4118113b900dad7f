/* commands — the fedlora subcommands. Each lives in cli/cmd_<name>.c, takes
 * the arguments after its name, prints errors on stderr itself, and returns
 * the process exit status (0 ok, 1 failure, 2 usage error). */
#ifndef FL_CLI_COMMANDS_H
#define FL_CLI_COMMANDS_H

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} cli_command;

int cmd_init_model(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
#ifdef FEDLORA_NET
int cmd_keygen(int argc, char **argv);
int cmd_node(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_aggregator(int argc, char **argv);
int cmd_roster(int argc, char **argv);
int cmd_doctor(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_export(int argc, char **argv);
#endif
int cmd_train(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_merge_adapter(int argc, char **argv);
int cmd_merge(int argc, char **argv);

#endif
