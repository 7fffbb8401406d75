"""A minimal HiveServer2 (TCLIService) server, standing in for Livy's Thrift
server in the JDBC tests: enough of the protocol for pyhive to open a
session, run a statement, fetch its single row and close.

The row's only value is this server's --name, so a test sees which server
answered. It serves the same handler on the binary transport (TSocket,
buffered, binary protocol, NOSASL) and on HTTP (any path, binary protocol),
the two transports of Livy's Thrift server. Prints READY when listening.
"""
import argparse
import threading
import uuid

from TCLIService import TCLIService, ttypes
from thrift.protocol import TBinaryProtocol
from thrift.server import THttpServer, TServer
from thrift.transport import TSocket, TTransport

OK = ttypes.TStatus(statusCode=ttypes.TStatusCode.SUCCESS_STATUS)
V6 = ttypes.TProtocolVersion.HIVE_CLI_SERVICE_PROTOCOL_V6


def handle_id():
    return ttypes.THandleIdentifier(guid=uuid.uuid4().bytes, secret=uuid.uuid4().bytes)


class Handler:
    def __init__(self, name):
        self.name = name
        self.fetched = set()
        self.lock = threading.Lock()

    def OpenSession(self, req):
        return ttypes.TOpenSessionResp(
            status=OK, serverProtocolVersion=V6,
            sessionHandle=ttypes.TSessionHandle(sessionId=handle_id()), configuration={})

    def CloseSession(self, req):
        return ttypes.TCloseSessionResp(status=OK)

    def GetInfo(self, req):
        return ttypes.TGetInfoResp(status=OK, infoValue=ttypes.TGetInfoValue(stringValue="livy-hs2-sim"))

    def ExecuteStatement(self, req):
        has_rows = req.statement.strip().upper().startswith("SELECT")
        op = ttypes.TOperationHandle(
            operationId=handle_id(), operationType=ttypes.TOperationType.EXECUTE_STATEMENT,
            hasResultSet=has_rows)
        return ttypes.TExecuteStatementResp(status=OK, operationHandle=op)

    def GetOperationStatus(self, req):
        return ttypes.TGetOperationStatusResp(
            status=OK, operationState=ttypes.TOperationState.FINISHED_STATE)

    def GetResultSetMetadata(self, req):
        col = ttypes.TColumnDesc(
            columnName="node", position=1,
            typeDesc=ttypes.TTypeDesc(types=[ttypes.TTypeEntry(
                primitiveEntry=ttypes.TPrimitiveTypeEntry(type=ttypes.TTypeId.STRING_TYPE))]))
        return ttypes.TGetResultSetMetadataResp(status=OK, schema=ttypes.TTableSchema(columns=[col]))

    def FetchResults(self, req):
        key = req.operationHandle.operationId.guid
        with self.lock:
            first = key not in self.fetched
            self.fetched.add(key)
        values = [self.name] if first else []
        column = ttypes.TColumn(stringVal=ttypes.TStringColumn(values=values, nulls=b"\x00"))
        rows = ttypes.TRowSet(startRowOffset=0, rows=[], columns=[column])
        return ttypes.TFetchResultsResp(status=OK, hasMoreRows=False, results=rows)

    def CloseOperation(self, req):
        return ttypes.TCloseOperationResp(status=OK)

    def CancelOperation(self, req):
        return ttypes.TCancelOperationResp(status=OK)

    def GetLog(self, req):
        return ttypes.TGetLogResp(status=OK, log="")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--binary", required=True, help="HOST:PORT")
    p.add_argument("--http", required=True, help="HOST:PORT")
    a = p.parse_args()
    processor = TCLIService.Processor(Handler(a.name))
    bhost, bport = a.binary.rsplit(":", 1)
    binary = TServer.TThreadedServer(
        processor, TSocket.TServerSocket(host=bhost, port=int(bport)),
        TTransport.TBufferedTransportFactory(), TBinaryProtocol.TBinaryProtocolFactory(),
        daemon=True)
    hhost, hport = a.http.rsplit(":", 1)
    http = THttpServer.THttpServer(
        processor, (hhost, int(hport)), TBinaryProtocol.TBinaryProtocolFactory())
    threading.Thread(target=binary.serve, daemon=True).start()
    threading.Thread(target=http.serve, daemon=True).start()
    print("READY", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
