/* eddy-node's offline tools (--dump-state, --verify-checkpoint): each reads files, prints
 * to stdout and returns the process's exit code. */
#ifndef EDDY_OFFLINE_H
#define EDDY_OFFLINE_H

/* Print the tables 'tables' (a comma list of table names, or "all") of the LevelDB in
 * 'data_dir' as hex. 0, 1 when the store cannot be read, 2 for an unknown table name. */
int offline_dump_state(const char *data_dir, const char *tables);

/* 0 if 'path' is a whole, valid checkpoint (printed as one JSON line), 1 otherwise (the
 * reason on stderr). 'key_file' ("" or NULL: none) is --checkpoint-key-file: an encrypted
 * checkpoint needs the key it was written with. */
int offline_verify_checkpoint(const char *path, const char *key_file);

#endif
