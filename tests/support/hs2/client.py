"""A real HiveServer2 client (pyhive, the library many Livy JDBC users run
from Python) going through livy-proxy: open a session, run a statement,
fetch the row, close. Prints "ROW <value>"; exits non-zero on any error."""
import argparse
import contextlib

from pyhive import hive


def main():
    p = argparse.ArgumentParser()
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--binary", help="HOST:PORT of the proxy's JDBC listener")
    g.add_argument("--http", help="HOST:PORT of the proxy's HTTP listener (path /cliservice)")
    a = p.parse_args()
    if a.binary:
        host, port = a.binary.rsplit(":", 1)
        conn = hive.connect(host=host, port=int(port), auth="NOSASL")
    else:
        host, port = a.http.rsplit(":", 1)
        conn = hive.connect(host=host, port=int(port), scheme="http", username="alice", password="secret")
    with contextlib.closing(conn):
        with contextlib.closing(conn.cursor()) as cur:
            cur.execute("SELECT node()")
            rows = cur.fetchall()
    print("ROW " + str(rows[0][0]), flush=True)


if __name__ == "__main__":
    main()
