// Readiness probe of scripts/broker.sh: succeeds once the broker answers a metadata
// request (Admin#listTopics sends Metadata), not merely once its port is open.
//
//   java -cp "$JARS/*" Ready.java BOOTSTRAP TIMEOUT_SECONDS
//
// Exit 0 when ready; 1 with the last error when the timeout passes.
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;

public class Ready {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[1]));
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "2000");
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "2000");
        p.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "200");
        Exception last = null;
        try (Admin admin = Admin.create(p)) {
            while (System.nanoTime() < deadline) {
                try {
                    int topics = admin.listTopics().names().get(2, TimeUnit.SECONDS).size();
                    int nodes = admin.describeCluster().nodes().get(2, TimeUnit.SECONDS).size();
                    if (nodes > 0) {
                        System.out.println("ready: " + nodes + " node(s), " + topics + " topic(s)");
                        return;
                    }
                } catch (Exception e) {
                    last = e;
                }
                Thread.sleep(200);
            }
        }
        System.err.println("not ready: " + (last == null ? "no broker node listed" : last));
        System.exit(1);
    }
}
