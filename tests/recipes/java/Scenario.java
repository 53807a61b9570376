// The scenario tests/it/recipes.rs runs against a live daemon and a
// throwaway PostgreSQL: the interceptor with servlet stand-ins (no servlet
// container here), queries through TimedDataSource over a Hikari pool.
import com.zaxxer.hikari.HikariConfig;
import com.zaxxer.hikari.HikariDataSource;
import java.lang.reflect.Proxy;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import javax.servlet.http.HttpServletRequest;
import javax.servlet.http.HttpServletResponse;
import javax.sql.DataSource;
import org.springframework.web.servlet.HandlerMapping;

public class Scenario {
    static HttpServletRequest request(String tenant) {
        return (HttpServletRequest) Proxy.newProxyInstance(Scenario.class.getClassLoader(),
            new Class<?>[] {HttpServletRequest.class}, (p, m, a) -> switch (m.getName()) {
                case "getHeader" -> "X-Tenant".equals(a[0]) ? tenant : null;
                case "getMethod" -> "GET";
                case "getAttribute" -> HandlerMapping.BEST_MATCHING_PATTERN_ATTRIBUTE.equals(a[0])
                    ? "/patients/{id}" : null;
                default -> null;
            });
    }

    static HttpServletResponse response(Map<String, Object> state) {
        state.put("status", 200);
        return (HttpServletResponse) Proxy.newProxyInstance(Scenario.class.getClassLoader(),
            new Class<?>[] {HttpServletResponse.class}, (p, m, a) -> {
                switch (m.getName()) {
                    case "setStatus" -> state.put("status", a[0]);
                    case "setHeader" -> state.put((String) a[0], a[1]);
                    default -> { }
                }
                return null;
            });
    }

    public static void main(String[] args) throws Exception {
        String url = System.getenv("TW_URL");
        String[] udp = System.getenv("TW_UDP").split(":");
        TenantwatchClient client = new TenantwatchClient(url, udp[0], Integer.parseInt(udp[1]), null,
            Duration.ofMillis(Long.parseLong(System.getenv().getOrDefault("TW_TIMEOUT_MS", "50"))), true);
        HikariConfig config = new HikariConfig();
        config.setJdbcUrl(System.getenv("TW_JDBC_URL"));
        config.setMaximumPoolSize(2);
        try (HikariDataSource hikari = new HikariDataSource(config)) {
            try (Connection c = hikari.getConnection()) {
                c.createStatement().execute("CREATE TABLE IF NOT EXISTS patients (id int, name text)");
                c.createStatement().execute("TRUNCATE patients");
                c.createStatement().execute("INSERT INTO patients SELECT g, 'p' FROM generate_series(1, 3) g");
            }
            DataSource db = new TimedDataSource(hikari, client).get();
            TenantwatchInterceptor interceptor = new TenantwatchInterceptor(client);
            Map<String, Object> out = new LinkedHashMap<>();
            for (Map.Entry<String, Integer> run : Map.of("clinic1", 5, "tiny", 3).entrySet()) {
                List<Object> codes = new ArrayList<>();
                for (int i = 0; i < run.getValue(); i++) {
                    Map<String, Object> state = new HashMap<>();
                    HttpServletRequest req = request(run.getKey());
                    HttpServletResponse res = response(state);
                    if (interceptor.preHandle(req, res, null)) {
                        try (Connection c = db.getConnection()) { // the controller's work
                            try (PreparedStatement q = c.prepareStatement("SELECT * FROM patients WHERE id <= ?")) {
                                q.setInt(1, 3);
                                try (ResultSet rows = q.executeQuery()) { while (rows.next()) { } }
                            }
                            try (PreparedStatement u = c.prepareStatement("UPDATE patients SET name = 'q' WHERE id = 1")) {
                                u.executeUpdate();
                            }
                        }
                    }
                    interceptor.afterCompletion(req, res, null, null);
                    codes.add(state.get("status"));
                    if (Integer.valueOf(429).equals(state.get("status"))) {
                        out.put("retry_after", state.get("Retry-After"));
                        out.put("ratelimit", state.get("RateLimit"));
                    }
                }
                out.put(run.getKey(), codes);
            }
            // The cost of one check, for docs/integration.md: the median of 200.
            long[] took = new long[200];
            for (int i = 0; i < took.length; i++) {
                long start = System.nanoTime();
                client.check("bench", 1);
                took[i] = (System.nanoTime() - start) / 1000;
            }
            java.util.Arrays.sort(took);
            out.put("check_us_median", took[100]);
            out.put("failures", client.failures.get());
            client.close();
            StringBuilder json = new StringBuilder("{");
            for (Map.Entry<String, Object> e : out.entrySet()) {
                if (json.length() > 1) json.append(',');
                Object v = e.getValue();
                json.append('"').append(e.getKey()).append("\":")
                    .append(v instanceof String ? "\"" + ((String) v).replace("\"", "\\\"") + "\"" : String.valueOf(v));
            }
            System.out.println(json.append('}'));
        }
    }
}
