// A Livy HA election participant, for tests and the demo: joins a Curator
// LeaderLatch exactly as Livy's CuratorElectorService does (same recipe, same
// participant-id-as-znode-data), and reports its role on stdout.
//
// Usage: java LatchMember <connectString> <latchPath> <participantId> <sessionTimeoutMs>
// Prints (line-buffered): READY, LEADER, FOLLOWER, and "LEADER_ID <id>" when
// the latch's leader changes.
// Stdin: a line "close" closes the latch cleanly and exits 0. End of stdin
// (the parent died, e.g. SIGKILL) halts at once WITHOUT closing: the
// ephemeral node stays until the ZooKeeper session expires, like a crash.
// SIGTERM closes the latch and the client cleanly (node deleted at once).

import java.io.BufferedReader;
import java.io.InputStreamReader;
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.leader.LeaderLatch;
import org.apache.curator.framework.recipes.leader.LeaderLatchListener;
import org.apache.curator.retry.RetryForever;

public class LatchMember {
    private static synchronized void say(String line) {
        System.out.println(line);
        System.out.flush();
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 4) {
            System.err.println("usage: LatchMember <connect> <path> <id> <sessionTimeoutMs>");
            System.exit(2);
        }
        String connect = args[0], path = args[1], id = args[2];
        int sessionTimeout = Integer.parseInt(args[3]);
        // Livy uses RetryNTimes(5, 100); retrying forever keeps the member
        // alive across a ZooKeeper restart in tests, which is what a Livy
        // server that keeps running looks like to the latch.
        CuratorFramework client = CuratorFrameworkFactory.builder()
                .connectString(connect)
                .sessionTimeoutMs(sessionTimeout)
                .connectionTimeoutMs(Math.min(sessionTimeout, 3000))
                .retryPolicy(new RetryForever(100))
                .build();
        client.start();
        LeaderLatch latch = new LeaderLatch(client, path, id);
        latch.addListener(new LeaderLatchListener() {
            public void isLeader() { say("LEADER"); }
            public void notLeader() { say("FOLLOWER"); }
        });
        final Object lock = new Object();
        final boolean[] closed = {false};
        Runnable close = () -> {
            synchronized (lock) {
                if (closed[0]) return;
                closed[0] = true;
                try { latch.close(); } catch (Exception e) { /* closing anyway */ }
                client.close();
            }
        };
        Runtime.getRuntime().addShutdownHook(new Thread(close));
        latch.start();
        say("READY");

        Thread poller = new Thread(() -> {
            String last = null;
            while (true) {
                String now;
                try {
                    now = latch.getLeader().getId();
                } catch (Exception e) {
                    now = "";
                }
                if (!now.equals(last)) {
                    say("LEADER_ID " + now);
                    last = now;
                }
                try { Thread.sleep(100); } catch (InterruptedException e) { return; }
            }
        });
        poller.setDaemon(true);
        poller.start();

        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        String line;
        while ((line = in.readLine()) != null) {
            if (line.trim().equals("close")) {
                close.run();
                Runtime.getRuntime().halt(0);
            }
        }
        // Parent gone: crash without closing anything.
        Runtime.getRuntime().halt(1);
    }
}
